#!/usr/bin/env bash
# Training presets with the published hyperparameters (SPEC sections 4 and 5).
#
# Settings (environment variables; defaults in brackets):
#   PRESET        visa2mvtec | mvtec2visa | demo                                  [visa2mvtec]
#                   visa2mvtec  train on VisA (test on MVTec-AD and the other datasets)
#                   mvtec2visa  train on MVTec-AD (test on VisA)
#                   demo        one epoch on the synthetic demo set (a smoke run)
#   METHOD        faprompt | bayes_pfl | fapfl | anomalyclip                      [faprompt]
#   COMPAT        ours | official  (official: every official-code behaviour, SPEC §8)  [ours]
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

# The published recipes. FAPrompt: Adam 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, seed 111,
# K = 10 abnormal prompts, deep prompts depth 9 / length 4. Bayes-PFL: B = 3 pairs of P = 5
# context and Q = 5 state vectors, 10 planar transforms, batch 32, up to 30 epochs, seed 333,
# learning rates 1e-3 (prompts, flows) / 1e-4 (linear) / 1e-2 (temperatures), 5 flow samples
# for validation. fapfl: the design card's default (SPEC section 6). AnomalyCLIP (its current
# train.sh): Adam 1e-3, batch 8, 15 epochs, depth 9, 12 context vectors, deep prompts of length 4,
# the maps of layer 24 only.
case "$METHOD" in
  faprompt)  recipe=(--epochs 15 --batch_size 8 --learning_rate 1e-3 --seed 111 --depth 9 --t_n_ctx 4
                     --abnormal_prompts 10 --dap_k 10) ;;
  bayes_pfl) recipe=(--epochs 30 --batch_size 32 --seed 333 --prompt_num 3 --prompt_context_len 5
                     --prompt_state_len 5 --num_flows 10 --learning_rate_prompt 1e-3 --learning_rate_PFL 1e-3
                     --learning_rate_linear 1e-4 --val_sample_num 5 --features_list 6 12 18 24) ;;
  fapfl)     recipe=(--epochs 20 --batch_size 8 --seed 111 --features_list 6 12 18 24) ;;
  anomalyclip) recipe=(--epochs 15 --batch_size 8 --learning_rate 1e-3 --seed 111 --depth 9 --n_ctx 12
                       --t_n_ctx 4 --features_list 24) ;;
  *) echo "train.sh: unknown METHOD=$METHOD (faprompt, bayes_pfl, fapfl, anomalyclip)" >&2; exit 2 ;;
esac
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
if [[ ! -f "$root/meta.json" ]]; then
  echo "train.sh: $root/meta.json not found. Set DATA_ROOT or TRAIN_DATA_PATH, and prepare the data with" >&2
  echo "          $PYTHON -m datasets.prepare --layout {visa,mvtec} --root $root" >&2
  exit 2
fi

save=$SAVE_ROOT/${name}_${METHOD}
"$PYTHON" train.py "${common[@]}" "${recipe[@]}" --dataset "$name" --train_data_path "$root" \
  --save_path "$save" "$@"
echo "train.sh: final checkpoint $save/final.pth"
if [[ "$PRESET" == demo ]]; then
  echo "          test it:  CHECKPOINT=$save/final.pth PRESET=demo bash test.sh"
else
  echo "          test it:  CHECKPOINT=$save/final.pth DATA_ROOT=$DATA_ROOT bash test.sh"
fi
