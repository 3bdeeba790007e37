"""Each speed lever measured alone, then together: what pays on this device, and by how much.

One process, one architecture, one set of weights: the network-only rate (evaluations/s) of a
base setting, then of the base with one lever changed (batch size, dtype, channels_last, a
pinned attention kernel, torch.compile and its CUDA-graph modes), then of every lever that paid
combined, then the size ``batch_size="auto"`` picks. Rates are against a dense matmul peak
measured in the same run. A lever that cannot run here (flash attention on the CPU, float32
with a fused kernel) is reported as such, not hidden. ``--budget-seconds`` skips the rows left
when time runs out (the GPU machine is lent by the quarter hour).

    python benchmarks/levers.py --arch tiny-sd --no-compile          # CPU smoke run
    python benchmarks/levers.py --arch sd-2-base --budget-seconds 240 --out benchmarks/levers_sd2.md
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import dc_zoo
from dc_zoo.acceleration import ATTENTION_KERNELS, denoising_network, optimize_backend
from dc_zoo.architectures import ARCHITECTURES, build_backend
from dc_zoo.backends.base import resolve_dtype
from dc_zoo.batch_size import batch_size_for_backend
from dc_zoo.preprocess import to_pixels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import flops_per_eval, matmul_peak, network_only, report  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """One point of the sweep."""

    dtype: torch.dtype
    batch: int
    channels_last: bool = False
    attention: str | None = None
    compile_mode: str | None = None  # None: eager; "default", "reduce-overhead", "max-autotune"

    def label(self) -> str:
        parts = [str(self.dtype).replace("torch.", ""), f"batch {self.batch}"]
        parts += ["channels_last"] if self.channels_last else []
        parts += [f"attention={self.attention}"] if self.attention else []
        parts += [f"compile({self.compile_mode})"] if self.compile_mode else ["eager"]
        return ", ".join(parts)


def measure(backend, setting: Setting, x0, conditions, seconds: float) -> float:
    """Network-only evaluations/s of ``setting``; the backend is put back as it was afterwards."""
    name, network = denoising_network(backend)
    backend.to(setting.dtype)
    try:
        optimize_backend(backend, channels_last=setting.channels_last, attention=setting.attention,
                         compile=setting.compile_mode is not None,
                         compile_mode=None if setting.compile_mode == "default" else setting.compile_mode)
        rate = network_only(backend, x0, conditions, setting.batch, seconds)
        wrapped = getattr(backend, name)
        if getattr(wrapped, "failed", False):
            raise RuntimeError("torch.compile failed; the rate was eager")
        return rate
    finally:
        setattr(backend, name, network)
        backend.static_batch = False
        network.to(memory_format=torch.contiguous_format)
        torch._dynamo.reset()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny-sd", choices=sorted(ARCHITECTURES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="base dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="base batch (default 128 GPU / 64 CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--compile-modes", nargs="+", default=None,
                        help="torch.compile modes to measure (default: default, reduce-overhead, max-autotune on "
                             "GPU; default on CPU)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per row")
    parser.add_argument("--budget-seconds", type=float, default=None, help="skip the rows left after this long")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    base = Setting(dtype=resolve_dtype(args.dtype) or (torch.bfloat16 if gpu else torch.float32),
                   batch=args.batch_size or (128 if gpu else 64))
    family = ARCHITECTURES[args.arch]["family"]
    backend = build_backend(args.arch).to(device)
    backend.to(base.dtype)
    torch.manual_seed(0)
    pixels = to_pixels(torch.rand(4, 3, backend.preprocess.size, backend.preprocess.size), backend.preprocess)
    x0 = backend.encode_images(pixels.to(device))
    classes = list(range(10)) if family == "dit" else [f"class {i}" for i in range(10)]
    candidates = (dc_zoo.CandidateSet.from_labels(classes) if family == "dit"
                  else dc_zoo.CandidateSet.from_classes(classes))
    conditions = backend.encode_conditions(list(candidates.conditions))
    flops = flops_per_eval(backend, x0, conditions)
    peak_dtype = torch.bfloat16 if gpu else torch.float32  # the speed issue's yardstick: bf16 matmul peak
    peak = matmul_peak(device, peak_dtype)

    convolutional = family != "dit"
    other_dtype = torch.float16 if base.dtype == torch.bfloat16 else torch.bfloat16
    one_at_a_time = [("base", base)]
    one_at_a_time += [("batch", replace(base, batch=b)) for b in sorted({32, base.batch // 2, base.batch * 2} - {base.batch})]
    one_at_a_time += [("dtype", replace(base, dtype=other_dtype))] if gpu else []
    one_at_a_time += [("channels_last", replace(base, channels_last=True))] if convolutional else []
    one_at_a_time += [("attention", replace(base, attention=k)) for k in sorted(ATTENTION_KERNELS)]
    if not args.no_compile:
        modes = args.compile_modes or (("default", "reduce-overhead", "max-autotune") if gpu else ("default",))
        one_at_a_time += [("compile", replace(base, compile_mode=m)) for m in modes]

    rows, rates = [], {}
    device_name = torch.cuda.get_device_name(device) if gpu else "CPU"
    footer: list[str] = []

    def line(kind, label, rate, note):
        if rate is None:
            return f"| {kind} | {label} | | | | | {note} |"
        tflops = rate * flops / 1e12
        base_rate = rates.get(base)
        ratio = f"{rate / base_rate:.2f}x" if base_rate else ""
        return f"| {kind} | {label} | {rate:,.1f} | {tflops:.3f} | {100 * tflops / peak:.1f}% | {ratio} | {note} |"

    def table() -> str:
        return "\n".join([
            f"levers for {args.arch} on {device_name} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
            f"{flops / 1e9:.3f} GFLOP/eval; network only, {args.seconds:g} s per row; matmul peak {peak:.2f} TFLOP/s "
            f"({str(peak_dtype).replace('torch.', '')})",
            "",
            "| lever | setting | evaluations/s | TFLOP/s | % of peak | vs base | note |",
            "|---|---|---|---|---|---|---|",
            *(line(*row) for row in rows),
            "",
            *footer,
            f"sweep time {time.perf_counter() - began:.0f} s",
        ])

    def run(kind: str, setting: Setting) -> None:
        if args.budget_seconds is not None and time.perf_counter() - began > args.budget_seconds:
            rows.append((kind, setting.label(), None, "skipped: time budget"))
            return
        try:
            rate = measure(backend, setting, x0, conditions, args.seconds)
        except Exception as err:  # noqa: BLE001 - a lever that cannot run here is a result too
            rows.append((kind, setting.label(), None, f"cannot run here: {str(err).split('(')[0].strip()[:100]}"))
            return
        rates[setting] = rate
        rows.append((kind, setting.label(), rate, ""))
        if args.out:  # a sweep stopped from outside still leaves the rows it finished
            args.out.write_text(table() + "\n")

    try:
        measure(backend, base, x0, conditions, args.seconds)  # warm-up: allocator, kernel choice, caches
        for kind, setting in one_at_a_time:
            run(kind, setting)
        base_rate = rates.get(base)
        if base_rate:
            # Every lever that beat the base by 3% or more, together.
            best = base
            paid = [(s, r) for s, r in rates.items() if r >= 1.03 * base_rate]
            for field in ("batch", "dtype", "channels_last", "attention", "compile_mode"):
                winners = [s for s, r in sorted(paid, key=lambda p: -p[1]) if getattr(s, field) != getattr(base, field)]
                if winners:
                    best = replace(best, **{field: getattr(winners[0], field)})
            if best != base:
                run("combined", best)
        footer.append(f"batch_size='auto' picks {batch_size_for_backend(backend, x0, conditions).describe()}")
    except KeyboardInterrupt:  # `timeout --signal=INT` or Ctrl-C: report what was measured
        footer.append("interrupted: the rows above are what finished")
    text = table()
    report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
