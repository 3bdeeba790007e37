#!/usr/bin/env bash
# The main job on the embedded default, offline: set up ./.venv, then run the STOCK
# `clip_benchmark eval` with Diffusion Classifier and CLIP miniatures side by side on the
# project's own lab, and merge the results with `clip_benchmark build`:
#   1. classification: digits (10 classes, 360 test images) and glyphs (62 classes, held-out
#      fonts; GLYPHS_PER_CLASS test images per class, 2 by default: the whole split is 10);
#   2. relations in Winoground's form (text, image and group scores; DC with and without the
#      unconditional normalisation) and SugarCrepe-style swap_att / swap_obj / replace_rel.
# Output lands in ./runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh 2>&1 | { grep -v "^WARNING: Location" || true; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONWARNINGS="ignore::UserWarning"
export PATH="$PWD/.venv/bin:$PATH"
OUT=runs/demo
GLYPHS_PER_CLASS=${GLYPHS_PER_CLASS:-2}
RELATIONS_LIMIT=${RELATIONS_LIMIT:-200}      # Winoground-form examples (all 200)
SUGAR_CREPE_LIMIT=${SUGAR_CREPE_LIMIT:-100}  # SugarCrepe files from the first 100 examples' 200 images
rm -rf "$OUT" && mkdir -p "$OUT/results/classification" "$OUT/results/relations" "$OUT/data"
python - "$OUT/data" "$GLYPHS_PER_CLASS" "$RELATIONS_LIMIT" "$SUGAR_CREPE_LIMIT" <<'PY'
import sys
from dc_zoo.digits import write_digits_webdataset
from dc_zoo.glyphs import write_glyphs_webdataset
from dc_zoo.relations import SUGAR_CREPE_TASKS, write_sugar_crepe, write_winoground_cache

data, per_class, limit, sugar_limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
write_digits_webdataset(f"{data}/digits", "test")  # {dataset_cleaned} of wds/digits
write_glyphs_webdataset(f"{data}/glyphs", "test", per_class=per_class)
write_winoground_cache(f"{data}/winoground", limit=limit)
for task in SUGAR_CREPE_TASKS:
    write_sugar_crepe(f"{data}/sugar_crepe-{task}", tasks=(task,), limit=sugar_limit)
PY
eval_stock() {  # clip_benchmark eval, its logs kept apart from the tables
    clip_benchmark eval --dataset_root "$OUT/data/{dataset_cleaned}" --num_workers 1 "$@" >> "$OUT/eval.log" 2>&1 \
        || { tail -n 20 "$OUT/eval.log"; exit 1; }
}
# 1. classification: each lab's DC miniature beside its CLIP miniature
for lab in digits glyphs; do
    printf 'diffusion-classifier,sd-%s-mini\nclip-%s-mini,dc-zoo\n' "$lab" "$lab" > "$OUT/models-$lab.txt"
    eval_stock --dataset "wds/$lab" --pretrained_model "$OUT/models-$lab.txt" \
        --output "$OUT/results/classification/{dataset}_{pretrained}_{model}_{task}.json"
done
clip_benchmark build "$OUT"/results/classification/*.json --output "$OUT/classification.csv"
# 2. relations: Winoground text / image / group scores and SugarCrepe text scores (batch size 1:
#    one example's images and captions together)
RELATIONS="winoground sugar_crepe/swap_att sugar_crepe/swap_obj sugar_crepe/replace_rel"
printf 'diffusion-classifier,sd-relations-mini\nclip-relations-mini,dc-zoo\n' > "$OUT/models-relations.txt"
eval_stock --dataset $RELATIONS --pretrained_model "$OUT/models-relations.txt" --batch_size 1 \
    --output "$OUT/results/relations/{dataset}_{pretrained}_{model}_{task}.json"
mkdir -p "$OUT/results/relations-raw"
DC_ZOO_CAPTION_SCORE=raw eval_stock --dataset winoground --model diffusion-classifier \
    --pretrained sd-relations-mini --batch_size 1 \
    --output "$OUT/results/relations-raw/{dataset}_{pretrained}_{model}_{task}.json"
clip_benchmark build "$OUT"/results/relations/*.json "$OUT"/results/relations-raw/*.json \
    --output "$OUT/relations.csv"
python - "$OUT/classification.csv" "$OUT/relations.csv" <<'PY'
import csv, sys


def cell(value):
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def table(path, cols, title):
    rows = list(csv.DictReader(open(path)))
    print(f"\n{title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in sorted(rows, key=lambda r: (r.get("dataset", ""), r.get("model_fullname", ""))):
        print("| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |")


table(sys.argv[1], ["dataset", "model_fullname", "acc1", "acc5", "mean_per_class_recall",
                    "dc_evaluations_per_image", "dc_seconds_per_image"], "Classification (top-1, top-5, recall)")
table(sys.argv[2], ["dataset", "model_fullname", "dc_caption_score", "text_acc", "image_acc", "acc",
                    "dc_evaluations_per_image"],
      "Relations (text_acc: the right caption for each image; image_acc: the right image for each caption; "
      "acc: Winoground's group score)")
PY
