"""nnkd_predict in float32 and with --bf16, side by side on trained models: Dice, label agreement, network time.

    python benchmarks/predict_bf16.py -i imagesTs --labels labelsTs -o OUT \
        --model 'teacher|RESULTS|-d 990 -c 3d_fullres -p nnUNetPlans --method none --run-name s0 -f 0' \
        --model 'tiny logit s0|RESULTS2|-d 990 -c 3d_fullres --budget tiny --method logit -f 0' [--disable_tta]

Each --model is `name|nnUNet_results of the run|nnkd_predict's student arguments`. Every model predicts the input
folder twice with `nnkd_predict --profile` (case by case, each step timed), once in torch float32 (`--stock`: the
same runtime as bf16's, not the fast path's choice) and once with `--bf16`, one after the other in this process's environment (keep the machine quiet); then per model: the Dice of
each class against --labels (2|A∩B| / (|A| + |B|) per case, averaged over the cases; a case where the class is
in neither is left out, as nnU-Net's evaluation leaves out its NaN), the share of voxels whose label is the same
in both runs, and the median network seconds per case of each.
Writes OUT/results.json and OUT/report.md and prints the report.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnkd.atomic import write_json_atomic
from nnkd.metrics import mean_dice_per_label


def labels(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def predict(model: str, results: str, arguments: list[str], images: Path, out: Path, bf16: bool,
            disable_tta: bool) -> dict:
    command = [str(Path(sys.executable).parent / "nnkd_predict"), "-i", str(images), "-o", str(out), *arguments,
               "--profile", "-device", "cpu", *(["--bf16"] if bf16 else ["--stock"]),
               *(["--disable_tta"] if disable_tta else [])]
    result = subprocess.run(command, env={**os.environ, "nnUNet_results": results}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"predict_bf16: error: {model}{' --bf16' if bf16 else ''}: "
                         f"{(result.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads((out / "profile.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", type=Path, required=True, help="images (CASE_XXXX.nii.gz)")
    parser.add_argument("--labels", type=Path, required=True, help="reference label maps (CASE.nii.gz)")
    parser.add_argument("-o", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME|RESULTS|ARGS")
    parser.add_argument("--disable_tta", action="store_true", help="predict without mirroring")
    args = parser.parse_args()
    reference = labels(args.labels)
    if not reference:
        parser.error(f"no label maps (*.nii.gz) in {args.labels}")
    classes = sorted(int(c) for c in np.unique(np.concatenate([r.ravel() for r in reference.values()])) if c > 0)
    rows = []
    for spec in args.model:
        name, results, arguments = (spec.split("|") + ["", ""])[:3]
        if not name or not results or not arguments:
            parser.error(f"--model {spec!r} is not NAME|RESULTS|ARGS")
        row = {"model": name, "results": results, "arguments": arguments}
        predicted = {}
        for precision, bf16 in (("float32", False), ("bf16", True)):
            out = args.o / "predictions" / name.replace(" ", "_").replace("/", "_") / precision
            profile = predict(name, results, shlex.split(arguments), args.i, out, bf16, args.disable_tta)
            predicted[precision] = labels(out)
            if set(predicted[precision]) != set(reference):
                parser.error(f"{name}: predicted {sorted(predicted[precision])}, labels {sorted(reference)}")
            dice = mean_dice_per_label(predicted[precision], reference, classes)
            row[precision] = {"dice_per_class": {str(c): v for c, v in dice.items()},
                              "dice": float(np.mean(list(dice.values()))),
                              "network_seconds_per_case": profile["median"]["seconds"]["network"],
                              "seconds_per_case": profile["median"]["total"], "runtime": profile["runtime"]}
        same = sum(int((predicted["float32"][n] == predicted["bf16"][n]).sum()) for n in reference)
        row["label_agreement"] = same / sum(r.size for r in reference.values())
        row["network_speedup"] = row["float32"]["network_seconds_per_case"] / row["bf16"]["network_seconds_per_case"]
        rows.append(row)
        print(f"{name}: Dice {row['float32']['dice']:.4f} → {row['bf16']['dice']:.4f}, agreement "
              f"{row['label_agreement']:.5%}, network {row['network_speedup']:.2f}× faster", flush=True)
    lines = ["| model | Dice float32 | Dice bf16 | Δ (points) | per class float32 → bf16 | labels the same | "
             "network s / case float32 | bf16 | faster |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["float32"], r["bf16"]
        per_class = ", ".join(f"{f['dice_per_class'][c]:.4f} → {b['dice_per_class'][c]:.4f}"
                              for c in f["dice_per_class"])
        lines.append(f"| {r['model']} | {f['dice']:.4f} | {b['dice']:.4f} | {100 * (b['dice'] - f['dice']):+.2f} | "
                     f"{per_class} | {r['label_agreement']:.4%} | {f['network_seconds_per_case']:.3f} | "
                     f"{b['network_seconds_per_case']:.3f} | {r['network_speedup']:.2f}× |")
    text = "\n".join(lines) + "\n"
    args.o.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.o / "results.json", {"cases": sorted(reference), "classes": classes,
                                                "mirroring": not args.disable_tta, "rows": rows})
    (args.o / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
