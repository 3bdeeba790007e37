"""Throughput of the Diffusion Classifier engine against the original code's loop shape.

One run, one device, one architecture: it measures a dense-matmul peak, the reference-like
configuration (per image, per stage, batches of 32 over that image's (candidate, t) pairs,
fp16 on GPU, eager, a host copy per batch: the official code's shape), the pure network
time at the engine's setting, and the engine end to end (preprocessing, VAE, text encoder,
all stages, bookkeeping). It prints a markdown table with evaluations/s, achieved TFLOP/s,
% of the measured peak, the ratio to the reference-like run, and the end-to-end overhead.
The reference-like loop and the end-to-end engine each run ``--repeats`` times; the fastest
run counts (the least disturbed by other work on the machine).

    python benchmarks/throughput.py --arch tiny-sd                      # CPU smoke run
    python benchmarks/throughput.py --arch sd-2-base --device cuda --dtype bfloat16 \
        --batch-size 128 --channels-last --compile --out benchmarks/sd2.md
    python benchmarks/throughput.py --arch sd-3-medium --flops-only     # FLOPs on the meta device

Architectures: SD 1.x/2.x UNets, DiT, the SD3 transformer (rectified flow; built without T5,
whose zeros in its place give the transformer the same sequence length) and the SDXL UNet.
``--flops-only`` builds the networks on the meta device (no memory, no weights) and prints the
FLOPs of one evaluation at the model's resolution.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import dc_zoo
from dc_zoo.acceleration import denoising_network, optimize_backend
from dc_zoo.architectures import ARCHITECTURES, build_backend
from dc_zoo.backends.base import resolve_dtype
from dc_zoo.engine import num_conditions, select_conditions
from dc_zoo.losses import per_sample_error
from dc_zoo.noise import sample_noise
from dc_zoo.preprocess import to_pixels

DEFAULTS = {  # images, classes, n_samples, to_keep: enough work for a steady state, short runs
    "tiny-sd": (8, 10, (10, 50), (3, 1)),
    "tiny-dit": (8, 10, (10, 50), (3, 1)),
    "sd-2-base": (4, 10, (8, 32), (3, 1)),
    "dit-xl-2-256": (2, 100, (4, 16), (10, 1)),
    "tiny-sd3": (8, 10, (10, 50), (3, 1)),
    "tiny-sdxl": (8, 10, (10, 50), (3, 1)),
    "sd-3-medium": (2, 10, (4, 16), (3, 1)),
    "sdxl-base": (2, 10, (4, 16), (3, 1)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(run, device: torch.device, repeats: int):
    """(fastest wall time of ``repeats`` calls, the last call's result): the least disturbed run."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        result = run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul TFLOP/s for ``dtype`` on ``device`` (the yardstick for % of peak)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = (50 if device.type == "cuda" else 10), time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _rows(conditions, index: torch.Tensor):
    """Candidates ``index`` of a conditioning tensor or pytree (the SD3 / SDXL condition dicts)."""
    device = torch.utils._pytree.tree_leaves(conditions)[0].device
    return select_conditions(conditions, index.to(device))


def flops_per_eval(backend, x0: torch.Tensor, conditions) -> float:
    """FLOPs of one network evaluation, counted on a batch of one.

    Attention runs on torch's math kernel here: the counter does not see the CPU's fused
    attention kernel (it would count none of attention's FLOPs there); the math kernel's
    matmuls are the same FLOPs every fused kernel does, so the count is the same on any device.
    """
    t = backend.schedule.model_timestep(torch.tensor([500])).to(x0.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]):
        backend.denoise(x0[:1].to(backend.dtype), t, _rows(conditions, torch.tensor([0])))
    return float(counter.get_total_flops())


def meta_flops_per_eval(arch: str) -> float:
    """FLOPs of one evaluation of architecture ``arch``, counted on the meta device: nothing is allocated,
    so the full-size networks (SDXL's 2.6B UNet, SD3's transformer) are counted on any machine."""
    backend = build_backend(arch, device="meta")
    size = backend.preprocess.size
    x0 = backend.encode_images(torch.zeros(1, 3, size, size, device="meta"))
    conditions = backend.encode_conditions([0] if backend.conditioning == "class_label" else ["a photo of a cat."])
    return flops_per_eval(backend, x0, conditions)


def network_only(backend, x0, conditions, batch_size: int, seconds: float) -> float:
    """Evaluations/s of bare network calls at ``batch_size`` (the engine's pure compute time)."""
    with torch.inference_mode():  # inputs made as the engine makes them, so a compiled network is reused
        idx = torch.arange(batch_size, device=x0.device) % x0.shape[0]
        cidx = torch.arange(batch_size) % num_conditions(conditions)
        x, c = x0[idx].to(backend.dtype).contiguous(), _rows(conditions, cidx)
        t = backend.schedule.model_timestep(torch.full((batch_size,), 500)).to(x0.device)
        for _ in range(2):
            backend.denoise(x, t, c)
        sync(x0.device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 3:
            backend.denoise(x, t, c)
            n += 1
        sync(x0.device)
    return n * batch_size / (time.perf_counter() - start)


@torch.inference_mode()
def reference_like(backend, x0, conditions, scoring, keys, dtype, batch_size=32):
    """The official code's loop: each image alone, per-stage lists, batches of 32, host copy per batch.

    DDPM-family models noise by hand with alphas_cumprod in ``dtype``, as the original; flow models
    (no alphas_cumprod) through their schedule, the same arithmetic the original would need.
    """
    schedule = backend.schedule
    plan = dc_zoo.TimestepPlan.from_stages(scoring.n_samples, schedule.num_train_timesteps)
    abar = schedule.alphas_cumprod.to(x0.device).to(dtype) if hasattr(schedule, "alphas_cumprod") else None
    predictions, evaluations = [], 0
    for n, key in enumerate(keys):
        all_noise = sample_noise(scoring.seed, key, plan.timesteps, 1, x0.shape[1:]).to(x0.device, dtype)[:, 0]
        latent = x0[n : n + 1].to(dtype)
        remaining = list(range(num_conditions(conditions)))
        errors: dict[int, list[float]] = {c: [] for c in remaining}
        for positions, keep in zip(plan.stage_positions, scoring.to_keep):
            ts, noise_idxs, cond_idxs = [], [], []
            for c in remaining:
                for p in positions:
                    ts.append(plan.timesteps[p])
                    noise_idxs.append(p)
                    cond_idxs.append(c)
            pred_errors = torch.zeros(len(ts))
            for start in range(0, len(ts), batch_size):
                batch_ts = torch.tensor(ts[start : start + batch_size], device=x0.device)
                noise = all_noise[noise_idxs[start : start + batch_size]]
                batch_conditions = _rows(conditions, torch.tensor(cond_idxs[start : start + batch_size]))
                if abar is not None:
                    a = abar[batch_ts].sqrt().view(-1, 1, 1, 1)
                    s = (1 - abar[batch_ts]).sqrt().view(-1, 1, 1, 1)
                    noised, target = latent * a + noise * s, noise
                else:
                    clean = latent.expand_as(noise)
                    noised, target = schedule.add_noise(clean, noise, batch_ts), schedule.target(clean, noise, batch_ts)
                pred = backend.denoise(noised, backend.schedule.model_timestep(batch_ts), batch_conditions)
                err = per_sample_error(pred, target, scoring.loss)
                pred_errors[start : start + len(batch_ts)] = err.cpu()  # the original's per-batch sync
            evaluations += len(ts)
            for c in remaining:
                mask = torch.tensor(cond_idxs) == c
                errors[c].extend(pred_errors[mask].tolist())
            means = torch.tensor([-torch.tensor(errors[c]).mean() for c in remaining])
            remaining = [remaining[i] for i in torch.topk(means, k=min(keep, len(remaining))).indices.tolist()]
        predictions.append(remaining[0])
    return predictions, evaluations


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny-sd", choices=sorted(ARCHITECTURES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="engine dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--reference-dtype", default=None, help="default: float16 on GPU, float32 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="engine batch (default 128 GPU / 64 CPU)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the network-only timing")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the reference-like loop and of the engine end to end (the fastest counts)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count one evaluation's FLOPs, on the meta device (no weights, no memory)")
    args = parser.parse_args(argv)
    if args.flops_only:
        report(f"arch {args.arch}: {meta_flops_per_eval(args.arch) / 1e9:.3f} GFLOP/eval (meta device)", args.out)
        return 0

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = resolve_dtype(args.dtype) or (torch.bfloat16 if gpu else torch.float32)
    ref_dtype = resolve_dtype(args.reference_dtype) or (torch.float16 if gpu else torch.float32)
    batch = args.batch_size or (128 if gpu else 64)
    n_img, n_cls, n_samples, to_keep = DEFAULTS[args.arch]
    n_img, n_cls = args.images or n_img, args.classes or n_cls
    family = ARCHITECTURES[args.arch]["family"]

    backend = build_backend(args.arch).to(device)
    classes = list(range(n_cls)) if family == "dit" else [f"class {i}" for i in range(n_cls)]
    scoring = dc_zoo.ScoringConfig(n_samples=n_samples, to_keep=to_keep, batch_size=batch)
    torch.manual_seed(0)
    size = backend.preprocess.size
    images = torch.rand(n_img, 3, size, size)
    pixels = to_pixels(images, backend.preprocess).to(device)
    keys = [f"bench-{i}" for i in range(n_img)]

    # Reference-like configuration: original dtype, eager, batch 32, one image at a time.
    backend.to(ref_dtype)
    x0 = backend.encode_images(pixels)
    candidates = dc_zoo.CandidateSet.from_labels(classes) if family == "dit" else dc_zoo.CandidateSet.from_classes(classes)
    conditions = backend.encode_conditions(list(candidates.conditions))
    flops = flops_per_eval(backend, x0, conditions)
    reference_like(backend, x0[:1], conditions, dc_zoo.ScoringConfig(n_samples=(2,), to_keep=(1,)), keys[:1], ref_dtype)
    ref_seconds, (ref_predictions, ref_evals) = best_time(
        lambda: reference_like(backend, x0, conditions, scoring, keys, ref_dtype), device, args.repeats)
    ref_rate = ref_evals / ref_seconds

    # Engine configuration.
    backend.to(dtype)
    optimize_backend(backend, channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode)

    def classifier():  # a fresh one encodes the prompts again: the text encoder counts, once per run
        return dc_zoo.DiffusionClassifier(backend, scoring, image_batch_size=n_img)

    conditions = backend.encode_conditions(list(candidates.conditions))
    x0 = backend.encode_images(pixels)
    net_rate = network_only(backend, x0, conditions, batch, args.seconds)
    classifier().classify(images[:1], classes, sample_keys=keys[:1])  # warm-up (compilation, allocator)
    e2e_seconds, out = best_time(lambda: classifier().classify(images, classes, sample_keys=keys), device, args.repeats)
    engine_evals = int(out.evaluations.sum())
    e2e_rate = engine_evals / e2e_seconds
    overhead = e2e_seconds / (engine_evals / net_rate) - 1
    peak_dtype = torch.bfloat16 if gpu else torch.float32  # the speed issue's yardstick: bf16 matmul peak
    peak = matmul_peak(device, peak_dtype)
    agree = sum(int(a) == int(b) for a, b in zip(out.predictions, ref_predictions))

    def row(name, dt, bs, rate):
        tflops = rate * flops / 1e12
        return f"| {name} | {str(dt).replace('torch.', '')} | {bs} | {rate:,.1f} | {tflops:.3f} | {100 * tflops / peak:.1f}% | {rate / ref_rate:.2f}x |"

    device_name = torch.cuda.get_device_name(device) if gpu else "CPU"
    levers = ", ".join(x for x, on in (("channels_last", args.channels_last), ("compile", args.compile)) if on) or "eager"
    lines = [
        f"arch {args.arch} on {device_name} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"{flops / 1e9:.3f} GFLOP/eval; {n_img} images x {n_cls} classes, n_samples {n_samples}, to_keep {to_keep}; "
        f"matmul peak {peak:.2f} TFLOP/s ({str(peak_dtype).replace('torch.', '')})",
        "",
        "| configuration | dtype | batch | evaluations/s | TFLOP/s | % of peak | vs reference-like |",
        "|---|---|---|---|---|---|---|",
        row("reference-like (per image, eager, host copy per batch)", ref_dtype, 32, ref_rate),
        row(f"engine, network only ({levers})", dtype, batch, net_rate),
        row(f"engine, end to end ({levers})", dtype, batch, e2e_rate),
        "",
        f"end-to-end overhead over pure network time: {100 * overhead:.1f}%",
        f"predictions equal to the reference-like run: {agree}/{n_img}",
        f"evaluations: engine {engine_evals}, reference-like {ref_evals}",
    ]
    report("\n".join(lines), args.out)
    return 0


def report(text: str, out: Path | None) -> None:
    """Print the table, and write it to ``out`` when given."""
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
