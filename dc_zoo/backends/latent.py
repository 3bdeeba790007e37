"""VAE encoding shared by latent-space backends: x0 = posterior MEAN x scaling factor.

The paper uses the mean of q(z | x), not a sample, so the same image always has the same x0.
"""
from __future__ import annotations

import torch

__all__ = ["encode_with_vae", "vae_scale_factor", "vae_latent_shape"]


def vae_scale_factor(vae) -> int:
    """Pixels per latent element along a side: 2 per down block after the first (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_latent_shape(vae, size: int) -> tuple[int, int, int]:
    """The shape of one ``size`` x ``size`` image's latent: (latent channels, side, side)."""
    side = int(size) // vae_scale_factor(vae)
    return (int(vae.config.latent_channels), side, side)


@torch.inference_mode()
def encode_with_vae(vae, pixels: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """Encode ``[B, 3, H, W]`` pixels in ``[-1, 1]`` to scaled float32 latents."""
    config = vae.config
    scale = float(getattr(config, "scaling_factor", 0.18215) or 0.18215)
    shift = getattr(config, "shift_factor", None)
    dtype = next(vae.parameters()).dtype
    device = next(vae.parameters()).device
    out = []
    for chunk in pixels.split(chunk_size):
        posterior = vae.encode(chunk.to(device=device, dtype=dtype)).latent_dist
        z = posterior.mean.float()
        if shift is not None:
            z = z - float(shift)
        out.append(z * scale)
    return torch.cat(out)
