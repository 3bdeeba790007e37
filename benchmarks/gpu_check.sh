#!/usr/bin/env bash
# The GPU benchmark as one prepared script (see ../shared/DEVICE.md for the device tool):
# SD-2-base UNet and DiT-XL/2 at their real configs with random weights, reference-like
# setting and engine settings measured in the same run on the same card.
# On the device: diffusers is carried as a wheel in .whl/ (pip download as DEVICE.md says).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
python3 benchmarks/throughput.py --arch sd-2-base --dtype float16 --batch-size 32 --seconds 5 --out "$OUT/sd2_fp16_b32.md"
python3 benchmarks/throughput.py --arch sd-2-base --dtype bfloat16 --batch-size 128 --channels-last --compile --seconds 5 --out "$OUT/sd2_bf16_b128_compile.md"
python3 benchmarks/throughput.py --arch dit-xl-2-256 --dtype bfloat16 --batch-size 256 --seconds 5 --out "$OUT/dit_bf16_b256.md"
python3 benchmarks/throughput.py --arch dit-xl-2-256 --dtype bfloat16 --batch-size 256 --compile --seconds 5 --out "$OUT/dit_bf16_b256_compile.md"
python3 benchmarks/throughput.py --arch dit-xl-2-256 --reference-dtype float32 --dtype bfloat16 --batch-size 256 --compile --seconds 5 --out "$OUT/dit_vs_fp32_reference.md"
