#!/usr/bin/env bash
# The demo behind `make demo`: a synthetic 2D dataset → nnU-Net's plans → nnU-Net's default 2d network trained
# as the teacher until it has found every class → a tiny student (≤ 1/16 of its parameters and GFLOPs)
# distilled from it by nnkd_distill (cache, train, validate, export for stock nnU-Net and ONNX, teacher vs
# student table) → the same student trained without KD, for comparison, and the three's Dice per class → the
# student segments imagesTs. 16 minutes on 2 CPU cores (docs/usage.md, "make demo").
#
# Why this data and schedule: the demo must end, on 2 CPU cores in under 25 minutes, with a teacher that has
# learned every class (organ, lesion, vessel) and a student close to it. On 3D volumes nnU-Net's default
# network needs more iterations to find the small lesion and vessel than 2 cores give it in that time
# (docs/benchmarks.md); on 96×96 single-slice images (batch 3) the same kind of network found them after
# 100–150 iterations in three runs. The schedules below were chosen from those measurements (docs/usage.md, "make demo").
set -euo pipefail
BIN="${BIN:-.venv/bin}"
DEVICE="${DEVICE:-$("$BIN/python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-20}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-40}"
ITERATIONS="${ITERATIONS:-25}"
COMMON=(--iterations-per-epoch "$ITERATIONS" --val-iterations-per-epoch 5 --device "$DEVICE")
RESULTS="$nnUNet_results/Dataset990_Synthetic"
TEACHER="$RESULTS/nnKDTrainer_NoKD__nnUNetPlans__2d"

"$BIN/nnkd_make_synthetic" -d 990 --dim 2 --cases 60 --shape 96 96 --overwrite
"$BIN/nnkd_plan_and_preprocess" -d 990 -c 2d --budget tiny -np 2

# The teacher: nnU-Net's own 2d plans (7.8 M parameters).
# A rerun keeps it (and nnkd_distill below resumes or keeps the student): delete nnkd_data/ to start afresh.
if [ ! -f "$TEACHER/fold_0/checkpoint_final.pth" ]; then
    "$BIN/nnkd_train" 990 2d 0 -p nnUNetPlans --method none --epochs "$TEACHER_EPOCHS" "${COMMON[@]}"
fi
# The tiny student, distilled from it in one command: the teacher's predictions are cached once, the student is
# trained with cached logit KD (nnkd's default: class-balanced KL), validated, exported for stock nnU-Net, zip
# and ONNX, and teacher vs student is printed (and kept in $DEMO_OUT/student_model/distill.json).
DEMO_OUT="${DEMO_OUT:-nnkd_data/demo}"
"$BIN/nnkd_distill" -d 990 -c 2d -f 0 --budget tiny --teacher "nnunet:$TEACHER" -o "$DEMO_OUT/student_model" \
    --zip --onnx --epochs "$STUDENT_EPOCHS" "${COMMON[@]}"

# For comparison, what distillation adds: the same tiny student trained alone (no KD), the same schedule.
"$BIN/nnkd_train" 990 2d 0 --budget tiny --method none --epochs "$STUDENT_EPOCHS" "${COMMON[@]}"
"$BIN/python" - "$TEACHER" "$DEMO_OUT/student_model/distill.json" "$RESULTS/nnKDTrainer_NoKD__nnKDPlans_tiny__2d" <<'PY'
import json, sys
from pathlib import Path

teacher, distill, alone = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
rows = {"teacher (nnU-Net 2d)": teacher, "tiny student, distilled": Path(distill["run_folder"]),
        "tiny student, no KD": alone}
labels = json.loads((teacher / "dataset.json").read_text())["labels"]
names = {str(v): k for k, v in labels.items() if v}
print("\nnnU-Net's validation of fold 0 (Dice):")
print(f"{'':26}" + "".join(f"{n:>9}" for n in names.values()) + f"{'mean':>9}")
for row, folder in rows.items():
    summary = json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
    print(f"{row:26}" + "".join(f"{summary['mean'][c]['Dice']:9.4f}" for c in names)
          + f"{summary['foreground_mean']['Dice']:9.4f}")
PY

# Use the student: segment the test images with it.
rm -rf "$DEMO_OUT/predictions"
"$BIN/nnkd_predict" -i "$nnUNet_raw/Dataset990_Synthetic/imagesTs" -o "$DEMO_OUT/predictions" \
    -d 990 -c 2d --budget tiny --method logit -f 0 -device "$DEVICE"
echo "Student predictions: $DEMO_OUT/predictions; stock nnU-Net model folder: $DEMO_OUT/student_model"
