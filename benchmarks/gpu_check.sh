#!/usr/bin/env bash
# The GPU benchmark as one prepared script (../shared/DEVICE.md: how the device tool runs it).
# SD-2-base UNet and DiT-XL/2 at their real configs with random weights; each reference-like
# setting is measured in the same run on the same card as the engine. Steps go in order of
# what the speed issue asks (targets first, then the per-lever sweep), each under its own time
# limit, so a slow step costs its slot and never the whole check; tables land in $OUT.
# On the device, diffusers and open_clip_torch (for its CLIP vocabulary) come as wheels in .whl/:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata open_clip_torch==3.3.0
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)  # ~6.5 min of steps
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
OUT=${OUT:-benchmarks/out}
# Rehearsal on a CPU machine: SD_ARCH=tiny-sd DIT_ARCH=tiny-dit DEVICE=cpu bash benchmarks/gpu_check.sh
SD_ARCH=${SD_ARCH:-sd-2-base} DIT_ARCH=${DIT_ARCH:-dit-xl-2-256} DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
started=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run under a time limit, report, go on
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, at $((SECONDS - started))s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  [ $rc -eq 0 ] || echo "=== $name: exit $rc"
}

python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
# 1. Targets: SD-2-base engine (float16, the default; batch 128, channels_last, compiled) against the
#    original's setting (fp16, batch 32, eager, per image); DiT-XL/2 against its original fp32 path.
step sd2_throughput 140 python3 benchmarks/throughput.py --arch $SD_ARCH --device $DEVICE --dtype float16 --reference-dtype float16 \
  --batch-size 128 --channels-last --compile --seconds 5 --out "$OUT/sd2_throughput.md"
step dit_throughput 90 python3 benchmarks/throughput.py --arch $DIT_ARCH --device $DEVICE --dtype float16 --reference-dtype float32 \
  --batch-size 256 --compile --seconds 5 --out "$OUT/dit_throughput.md"
# 2. Numerics on the trained miniatures: float16 and bfloat16 against float32, on this GPU.
step precision 40 python3 benchmarks/precision.py --device $DEVICE --dtypes float16 bfloat16 --limit 120 \
  > "$OUT/precision.md"
cat "$OUT/precision.md"
# 3. Each lever alone, then combined (the sweeps stop starting rows at their budget).
step sd2_levers 70 python3 benchmarks/levers.py --arch $SD_ARCH --device $DEVICE --dtype float16 --batch-size 128 --seconds 2 \
  --compile-modes default reduce-overhead --budget-seconds 45 --out "$OUT/sd2_levers.md"
step dit_levers 50 python3 benchmarks/levers.py --arch $DIT_ARCH --device $DEVICE --dtype float16 --batch-size 256 --seconds 2 \
  --compile-modes default reduce-overhead --budget-seconds 30 --out "$OUT/dit_levers.md"
echo "=== done in $((SECONDS - started))s"
