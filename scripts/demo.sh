#!/usr/bin/env bash
# The demo behind `make demo`: synthetic dataset → plans → a briefly trained nnU-Net teacher → a tiny
# student distilled from it by nnkd_distill (cache, train, validate, export for stock nnU-Net and ONNX,
# teacher vs student table) → the student segments imagesTs. About 20 minutes on 2 CPU cores.
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
# A rerun keeps it (and nnkd_distill below resumes or keeps the student): delete nnkd_data/ to start afresh.
if [ ! -f "$RESULTS/nnKDTrainer_NoKD__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth" ]; then
    "$BIN/nnkd_train" 990 3d_fullres 0 -p nnUNetPlans --method none "${SCHEDULE[@]}"
fi
# The tiny student (≤ 1/16 of the teacher), distilled from it in one command: the teacher's predictions are
# cached once, the student is trained with cached logit KD, validated, exported for stock nnU-Net, zip and
# ONNX, and teacher vs student is printed (and kept in $DEMO_OUT/student_model/distill.json).
DEMO_OUT="${DEMO_OUT:-nnkd_data/demo}"
"$BIN/nnkd_distill" -d 990 -c 3d_fullres -f 0 --budget tiny \
    --teacher "nnunet:$RESULTS/nnKDTrainer_NoKD__nnUNetPlans__3d_fullres" -o "$DEMO_OUT/student_model" --zip --onnx \
    "${SCHEDULE[@]}"

# Use the student: segment the test images with it.
rm -rf "$DEMO_OUT/predictions"
"$BIN/nnkd_predict" -i "$nnUNet_raw/Dataset990_Synthetic/imagesTs" -o "$DEMO_OUT/predictions" \
    -d 990 -c 3d_fullres --budget tiny --method logit -f 0 -device "$DEVICE"
echo "Student predictions: $DEMO_OUT/predictions; stock nnU-Net model folder: $DEMO_OUT/student_model"
