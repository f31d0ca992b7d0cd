#!/usr/bin/env bash
# Training presets with the published hyperparameters (docs/training.md).
#
# Settings (environment variables; defaults in brackets):
#   PRESET        visa2mvtec | mvtec2visa | demo                                  [visa2mvtec]
#                   visa2mvtec  train on VisA (test on MVTec-AD and the other datasets)
#                   mvtec2visa  train on MVTec-AD (test on VisA)
#                   demo        one epoch on the synthetic demo set (a smoke run)
#   METHOD        a trainable method of the registry (python -m tools.methods_table)  [faprompt]
#   COMPAT        ours | official  (official: every official-code behaviour, docs/faithfulness.md)  [ours]
#   DATA_ROOT     folder holding visa/ and mvtec/ (each with meta.json)           [./data]
#   TRAIN_DATA_PATH  the auxiliary dataset root (overrides DATA_ROOT/<dataset>)
#   CLIP_WEIGHTS  a local ViT-L-14-336px.pt; unset: open_clip downloads the 'openai' weights
#   GPU           CUDA device index                                               [0]
#   SAVE_ROOT     checkpoint folder                                               [./checkpoints]
#   PYTHON        interpreter                                                     [python]
# Extra arguments go to train.py (e.g. --resume auto, --val_protocol target --val_data_path ...).
#
# Examples:
#   DATA_ROOT=/data bash train.sh
#   METHOD=bayes_pfl PRESET=mvtec2visa DATA_ROOT=/data bash train.sh
#   METHOD=bayes_pfl COMPAT=official DATA_ROOT=/data bash train.sh --val_protocol target --val_data_path /data/mvtec
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
GPU=${GPU:-0}
PRESET=${PRESET:-visa2mvtec}
METHOD=${METHOD:-faprompt}
COMPAT=${COMPAT:-ours}
DATA_ROOT=${DATA_ROOT:-./data}
SAVE_ROOT=${SAVE_ROOT:-./checkpoints}
export CUDA_VISIBLE_DEVICES=$GPU

weights=()
if [[ -n "${CLIP_WEIGHTS:-}" ]]; then
  if [[ ! -f "$CLIP_WEIGHTS" ]]; then echo "train.sh: CLIP_WEIGHTS=$CLIP_WEIGHTS is not a file" >&2; exit 2; fi
  weights=(--pretrained "$CLIP_WEIGHTS")
fi

# The published recipes (epochs, batch, seed, learning rates, validation, augmentation) and the
# methods' sizes are their registry entries' (models/methods/<method>.py; docs/methods/), which
# train.py applies when no flag overrides them.
methods=$("$PYTHON" -c 'from models import methods; print(" ".join(methods.names(trainable=True)))') || {
  echo "train.sh: could not read the method registry with $PYTHON (is the environment installed?)" >&2; exit 2; }
if [[ " $methods " != *" $METHOD "* ]]; then
  echo "train.sh: unknown METHOD=$METHOD (one of: $methods)" >&2; exit 2
fi
recipe=()
common=(--method "$METHOD" --compat "$COMPAT" --image_size 518 "${weights[@]}")

case "$PRESET" in
  visa2mvtec) name=visa; root=${TRAIN_DATA_PATH:-$DATA_ROOT/visa} ;;
  mvtec2visa) name=mvtec; root=${TRAIN_DATA_PATH:-$DATA_ROOT/mvtec} ;;
  demo)
    name=synthetic; root=${TRAIN_DATA_PATH:-./demo_data}
    if [[ ! -f "$root/meta.json" ]]; then "$PYTHON" -m datasets.synthetic --out "$root"; fi
    recipe+=(--epochs 1 --val_fraction 0.3)
    ;;
  *) echo "train.sh: unknown PRESET=$PRESET (visa2mvtec, mvtec2visa, demo)" >&2; exit 2 ;;
esac
# the datasets the method's official scripts train on together with this one (AdaCLIP: MVTec-AD +
# ColonDB, VisA + ClinicDB), from DATA_ROOT
companions=$("$PYTHON" -c 'import sys; from models import methods
print(" ".join(methods.get(sys.argv[1]).recipe.companions.get(sys.argv[2], ())))' "$METHOD" "$name")
roots=("$root")
dataset=(--dataset "$name")
for extra in $companions; do roots+=("$DATA_ROOT/$extra"); name=$name+$extra; dataset=(); done
for folder in "${roots[@]}"; do
  if [[ ! -f "$folder/meta.json" ]]; then
    echo "train.sh: $folder/meta.json not found. Set DATA_ROOT or TRAIN_DATA_PATH, and prepare the data with" >&2
    echo "          $PYTHON -m datasets.prepare --layout {visa,mvtec} --root $folder  (docs/datasets.md)" >&2
    exit 2
  fi
done

save=$SAVE_ROOT/${name}_${METHOD}
"$PYTHON" train.py "${common[@]}" "${recipe[@]}" "${dataset[@]}" --train_data_path "${roots[@]}" \
  --save_path "$save" "$@"
echo "train.sh: final checkpoint $save/final.pth"
if [[ "$PRESET" == demo ]]; then
  echo "          test it:  CHECKPOINT=$save/final.pth PRESET=demo bash test.sh"
else
  echo "          test it:  CHECKPOINT=$save/final.pth DATA_ROOT=$DATA_ROOT bash test.sh"
fi
