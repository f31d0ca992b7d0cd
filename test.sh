#!/usr/bin/env bash
# Zero-shot testing presets. With nothing configured this runs the training-free CLIP baseline
# on a small synthetic demo set (generated on first use), so it works on a fresh machine with
# nothing but CLIP weights.
#
# Settings (environment variables; defaults in brackets):
#   PRESET        demo | visa2mvtec | mvtec2visa | others | paper              [demo, or visa2mvtec
#                 when CHECKPOINT is set]
#                   demo        training-free baseline on the synthetic demo set
#                   visa2mvtec  a model trained on VisA, tested on MVTec-AD   (the papers' main table)
#                   mvtec2visa  a model trained on MVTec-AD, tested on VisA
#                   others      one checkpoint on every dataset in DATASETS (Bayes-PFL tests them with
#                               its VisA-trained model, AnomalyCLIP with its MVTec-AD-trained one)
#                   paper       every prepared dataset of the papers' tables under DATA_ROOT (each
#                               DATA_ROOT/<name>/meta.json, from python -m datasets.prepare --dataset),
#                               then one table beside the published figures: PAPER_DIR/paper_table.md.
#                               Without CHECKPOINT and DATA_ROOT: the clip baseline on a miniature
#                               demo of several datasets (./demo_paper, prepared on first use)
#   CHECKPOINT    train.py's final.pth, or an official FAPrompt / Bayes-PFL checkpoint
#   METHOD        a training-free method (clip, winclip) without CHECKPOINT (other methods come from CHECKPOINT)
#   DATA_ROOT     folder holding one sub-folder per dataset (each with meta.json) [./data]
#   DATA_PATH     the target dataset root (overrides DATA_ROOT/<dataset>)
#   DATASETS      datasets of the 'others' preset      [btad mpdd dtd sdd aitex dagm elpv ...]
#   CLIP_WEIGHTS  a local ViT-L-14-336px.pt; unset: open_clip downloads the 'openai' weights
#   GPU           CUDA device index                   [0]
#   IMAGE_SIZE    input size                          [a checkpoint's own; 518 for the baseline,
#                                                      336 (CLIP's native size) in its CPU-friendly demo]
#   SAVE_ROOT     parent of the results folders       [./results]; each run writes to
#                 SAVE_ROOT/<dataset>_<method>_<checkpoint's run name> (test.py's default)
#   PAPER_DIR     results of PRESET=paper             [SAVE_ROOT/paper_<method or checkpoint folder>];
#                 one folder per dataset, and paper_table.md / paper_table.csv
#   PYTHON        interpreter                         [python]
# Extra arguments go to test.py (e.g. --save_vis --save_maps --batch_size 16).
#
# Examples:
#   bash test.sh
#   CHECKPOINT=checkpoints/visa_faprompt/final.pth DATA_ROOT=/data bash test.sh --save_vis
#   PRESET=mvtec2visa CHECKPOINT=train_mvtec.pth DATA_ROOT=/data bash test.sh
#   PRESET=paper CHECKPOINT=checkpoints/mvtec_faprompt/final.pth DATA_ROOT=/data bash test.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
GPU=${GPU:-0}
DATA_ROOT_SET=${DATA_ROOT:+1}
DATA_ROOT=${DATA_ROOT:-./data}
SAVE_ROOT=${SAVE_ROOT:-./results}
CHECKPOINT=${CHECKPOINT:-}
METHOD=${METHOD:-}
if [[ -n "$CHECKPOINT" ]]; then PRESET=${PRESET:-visa2mvtec}; else PRESET=${PRESET:-demo}; fi
DATASETS=${DATASETS:-"btad mpdd dtd sdd aitex dagm elpv brainmri headct br35h isic clinicdb colondb kvasir endo tn3k"}
export CUDA_VISIBLE_DEVICES=$GPU

weights=()
if [[ -n "${CLIP_WEIGHTS:-}" ]]; then
  if [[ ! -f "$CLIP_WEIGHTS" ]]; then echo "test.sh: CLIP_WEIGHTS=$CLIP_WEIGHTS is not a file" >&2; exit 2; fi
  weights=(--pretrained "$CLIP_WEIGHTS")
fi
model=()
if [[ -n "$CHECKPOINT" ]]; then
  model=(--checkpoint_path "$CHECKPOINT")
else
  free=$("$PYTHON" -c 'from models import methods; print(" ".join(methods.names(trainable=False)))') || {
    echo "test.sh: could not read the method registry with $PYTHON (is the environment installed?)" >&2; exit 2; }
  METHOD=${METHOD:-}
  if [[ -z "$METHOD" && ( "$PRESET" == demo || "$PRESET" == paper ) ]]; then METHOD=${free%% *}; fi
  if [[ " $free " != *" $METHOD "* ]]; then
    echo "test.sh: PRESET=$PRESET needs CHECKPOINT=<train.py final.pth or an official checkpoint>, or a" \
         "training-free METHOD (one of: $free)" >&2
    exit 2
  fi
  model=(--method "$METHOD")
  # a method whose reference runs at its own size (WinCLIP: 240 px) keeps it
  own_size=$("$PYTHON" -c 'import sys; from models import methods; print(methods.get(sys.argv[1]).backbone.get("image_size", ""))' "$METHOD")
fi

# The official test settings come from the checkpoint (518 px, layers 6 12 18 24, Bayes-PFL
# R = 10 flow samples), and so does the seed: test.py's rule (--seed, else the checkpoint's, else
# the method's; 333 for an official Bayes-PFL file, as its test.sh) is not overridden here.
# image size: IMAGE_SIZE if set; else a checkpoint's own (518 for the published recipes); else
# 518, or 336 (CLIP's native size, quick on a CPU) for the training-free demo; a training-free
# method with a size of its own (WinCLIP's 240 px on its ViT-B-16-plus-240) keeps it
official=(--metrics image-pixel)
if [[ -n "${IMAGE_SIZE:-}" ]]; then official+=(--image_size "$IMAGE_SIZE")
elif [[ -n "${own_size:-}" ]]; then :
elif [[ -z "$CHECKPOINT" && ( "$PRESET" == demo || ( "$PRESET" == paper && -z "$DATA_ROOT_SET" ) ) ]]; then
  official+=(--image_size 336)
elif [[ -z "$CHECKPOINT" ]]; then official+=(--image_size 518); fi

run() {  # run <dataset name> <dataset root> [test.py arguments]
  local name=$1 root=$2
  shift 2
  if [[ ! -f "$root/meta.json" ]]; then
    echo "test.sh: $root/meta.json not found; prepare it with: $PYTHON -m datasets.prepare --dataset $name" \
         "--root <the original download> --out $root (or --layout mvtec --root $root for data in MVTec layout)" >&2
    return 2
  fi
  "$PYTHON" test.py "${model[@]}" "${weights[@]}" --data_path "$root" --dataset "$name" \
    --save_root "$SAVE_ROOT" "${official[@]}" "$@"
}

case "$PRESET" in
  demo)
    demo=${DATA_PATH:-./demo_data}
    if [[ ! -f "$demo/meta.json" ]]; then
      echo "test.sh: generating the synthetic demo set in $demo"
      "$PYTHON" -m datasets.synthetic --out "$demo"
    fi
    run synthetic "$demo" --save_vis "$@"
    echo "test.sh: results in $SAVE_ROOT/synthetic_<method>[_<run name>]/ (report.html, results.md, results.json, results.csv, vis/)"
    ;;
  visa2mvtec) run mvtec "${DATA_PATH:-$DATA_ROOT/mvtec}" "$@" ;;
  mvtec2visa) run visa "${DATA_PATH:-$DATA_ROOT/visa}" "$@" ;;
  others)
    status=0
    for name in $DATASETS; do run "$name" "$DATA_ROOT/$name" "$@" || status=$?; done
    exit $status
    ;;
  paper)
    if [[ -z "$CHECKPOINT" && -z "$DATA_ROOT_SET" ]]; then
      DATA_ROOT=./demo_paper
      if [[ ! -f "$DATA_ROOT/prepared" ]]; then
        echo "test.sh: preparing the miniature paper-table demo in $DATA_ROOT"
        "$PYTHON" -m datasets.paper_demo --out "$DATA_ROOT" && touch "$DATA_ROOT/prepared"
      fi
    fi
    tag=${CHECKPOINT:+$(basename "$(dirname "$CHECKPOINT")")}
    PAPER_DIR=${PAPER_DIR:-$SAVE_ROOT/paper_${tag:-$METHOD}}
    names=$("$PYTHON" -c 'from datasets import raw; print(" ".join(raw.names()))') || {
      echo "test.sh: could not read the dataset registry with $PYTHON" >&2; exit 2; }
    status=0
    for name in $names; do
      if [[ -f "$DATA_ROOT/$name/meta.json" ]]; then
        run "$name" "$DATA_ROOT/$name" --save_path "$PAPER_DIR/$name" "$@" || status=$?
      fi
    done
    "$PYTHON" -m tools.paper_table --results "$PAPER_DIR" --data_root "$DATA_ROOT" || status=$?
    exit $status
    ;;
  *) echo "test.sh: unknown PRESET=$PRESET (demo, visa2mvtec, mvtec2visa, others, paper)" >&2; exit 2 ;;
esac
