#!/usr/bin/env bash
# The demo behind `make demo`: synthetic dataset → plans → a briefly trained nnU-Net teacher → a tiny
# student distilled from it → both validation Dice values → the student segments imagesTs and is
# exported for stock nnU-Net and ONNX. About 20 minutes on 2 CPU cores.
set -euo pipefail
BIN="${BIN:-.venv/bin}"
DEVICE="${DEVICE:-$("$BIN/python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
EPOCHS="${EPOCHS:-4}"
ITERATIONS="${ITERATIONS:-25}"
SCHEDULE=(--epochs "$EPOCHS" --iterations-per-epoch "$ITERATIONS" --val-iterations-per-epoch 5 --device "$DEVICE")
RESULTS="$nnUNet_results/Dataset990_Synthetic"

"$BIN/nnkd_make_synthetic" -d 990 --overwrite
"$BIN/nnkd_plan_and_preprocess" -d 990 -c 3d_fullres --budget tiny -np 2

# The teacher: nnU-Net's own 3d_fullres plans (16.5 M parameters), trained briefly.
"$BIN/nnkd_train" 990 3d_fullres 0 -p nnUNetPlans --method none "${SCHEDULE[@]}"
# The tiny student (≤ 1/16 of the teacher), distilled from it with logit KD.
"$BIN/nnkd_train" 990 3d_fullres 0 --budget tiny --method logit \
    --teacher "nnunet:$RESULTS/nnKDTrainer_NoKD__nnUNetPlans__3d_fullres" "${SCHEDULE[@]}"

# Use the student: segment the test images with it, then export it for stock nnU-Net and ONNX Runtime.
DEMO_OUT="${DEMO_OUT:-nnkd_data/demo}"
rm -rf "$DEMO_OUT/predictions" "$DEMO_OUT/student_model" "$DEMO_OUT/student_model.zip"
"$BIN/nnkd_predict" -i "$nnUNet_raw/Dataset990_Synthetic/imagesTs" -o "$DEMO_OUT/predictions" \
    -d 990 -c 3d_fullres --budget tiny --method logit -f 0 -device "$DEVICE"
"$BIN/nnkd_export" -d 990 -c 3d_fullres --budget tiny --method logit -f 0 -o "$DEMO_OUT/student_model" --zip --onnx

"$BIN/python" - "$RESULTS" <<'PY'
import json, sys
from pathlib import Path
results = Path(sys.argv[1])
for role, run in (("teacher (nnUNetPlans)", "nnKDTrainer_NoKD__nnUNetPlans__3d_fullres"),
                  ("student (tiny, logit KD)", "nnKDTrainer_Logit__nnKDPlans_tiny__3d_fullres")):
    folder = results / run
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    params = plans.get("nnkd_student", {}).get("params")
    dice = json.loads((folder / "fold_0/validation/summary.json").read_text())["foreground_mean"]["Dice"]
    size = f", {params / 1e6:.2f} M parameters" if params else ""
    print(f"{role:26s} validation Dice {dice:.3f}{size}")
PY
echo "Student predictions: $DEMO_OUT/predictions; stock nnU-Net model folder: $DEMO_OUT/student_model"
