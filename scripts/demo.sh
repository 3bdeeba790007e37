#!/usr/bin/env bash
# The main job on the embedded default, offline: set up ./.venv, then run the STOCK
# `clip_benchmark eval` with Diffusion Classifier (sd-digits-mini) and CLIP (clip-digits-mini)
# side by side on the digits test split (360 images), and merge the results with
# `clip_benchmark build` into one table. Output lands in ./runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh 2>&1 | { grep -v "^WARNING: Location" || true; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="$PWD/.venv/bin:$PATH"
OUT=runs/demo
rm -rf "$OUT" && mkdir -p "$OUT/results"
python -c "from dc_zoo.digits import write_digits_webdataset as w; w('$OUT/digits_wds', 'test')"
printf 'diffusion-classifier,sd-digits-mini\nclip-digits-mini,dc-zoo\n' > "$OUT/models.txt"
clip_benchmark eval --dataset wds/digits --dataset_root "$OUT/digits_wds" --pretrained_model "$OUT/models.txt" \
    --num_workers 1 --output "$OUT/results/{dataset}_{pretrained}_{model}_{task}.json"
clip_benchmark build "$OUT/results" --output "$OUT/digits.csv"
python - "$OUT/digits.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cols = ["model_fullname", "acc1", "acc5", "mean_per_class_recall", "dc_evaluations_per_image", "dc_seconds_per_image"]
print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
def cell(value):
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value
for r in rows:
    print("| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |")
PY
