"""Shared pieces of the ``dc-zoo eval`` tests: the digits WebDataset, the model, and a runner.

Every compared run uses the same small, cheap configuration (24 test digits in chunks of 2,
stages 2/4 keeping 3/1) and one CPU thread per process: the thread count changes float
reduction order, so bit-identical comparisons need it fixed (torchrun sets OMP_NUM_THREADS=1
for multi-process runs anyway).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIMIT = 24
SCHEDULE = ["--n-samples", "2", "4", "--to-keep", "3", "1", "--image-batch-size", "2", "--batch-size", "16",
            "--limit", str(LIMIT)]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The digits test split as a clip_benchmark WebDataset (``--dataset wds/digits``)."""
    from dc_zoo.digits import write_digits_webdataset

    return write_digits_webdataset(tmp_path_factory.mktemp("digits-wds"), "test")


def save_tiny_sd_pipeline(folder: Path) -> Path:
    """A 16 px StableDiffusionPipeline with random tiny networks and the real CLIP tokenizer."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dc_zoo.clip_tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                   tokenizer=build_clip_tokenizer(folder.with_name(folder.name + "-tokenizer")),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_dit_pipeline(folder: Path) -> Path:
    """A 16 px DiTPipeline over the ten digit classes, with the id2label table DiT repos ship."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from dc_zoo.digits import CLASS_NAMES

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=len(CLASS_NAMES), norm_type="ada_norm_zero",
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    scheduler = DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(k): v for k, v in enumerate(CLASS_NAMES)}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


@pytest.fixture(scope="session")
def eval_model(tmp_path_factory) -> str:
    """The model every eval test scores with, by the name ``dc-zoo eval --model`` takes."""
    return str(save_tiny_sd_pipeline(tmp_path_factory.mktemp("eval-model") / "tiny-sd"))


@pytest.fixture(scope="session")
def eval_dit_model(tmp_path_factory) -> str:
    """A class-conditional model (integer labels, no prompts) for the eval tests."""
    return str(save_tiny_dit_pipeline(tmp_path_factory.mktemp("eval-dit") / "tiny-dit"))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    return env


def eval_args(model: str, root: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", model, "--dataset", "wds/digits", "--dataset_root", str(root), "--output", str(output),
            *SCHEDULE, "--no-progress", *extra]


def run_eval(args: list[str], nproc: int = 1, port: int = 29641, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dc_zoo.evaluation ARGS`` alone, or under ``torchrun --nproc-per-node NPROC``."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "dc_zoo.evaluation", *args]
    else:
        cmd = [TORCHRUN, f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "dc_zoo.evaluation", *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def start_eval(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dc_zoo.evaluation", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_files(output: Path) -> tuple[Path, Path, Path]:
    """(clip_benchmark JSON, samples.jsonl, store folder) of the only run in ``output``."""
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    return run_dir.with_suffix(".json"), run_dir / "samples.jsonl", run_dir / "store"


def read_results(output: Path) -> tuple[dict, list[dict]]:
    results, samples, _ = result_files(output)
    lines = samples.read_text().splitlines()
    return json.loads(results.read_text()), [json.loads(line) for line in lines[1:]]


class one_thread:
    """``with one_thread():`` in-process runs use one CPU thread, like the subprocess runs."""

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


def eval_in_process(args: list[str]) -> int:
    """``dc-zoo eval ARGS`` in this process (one thread); returns the exit status."""
    from dc_zoo.evaluation.command import main

    with one_thread():
        return main(args)
