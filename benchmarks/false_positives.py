"""Where a model's false positives of one class lie, and how sure it is of the class where the image looks like it.

    python benchmarks/false_positives.py --class 1 [--teacher MODEL_FOLDER] [--runs RUNS [RUNS ...]] \
        [-d 990] [-c 3d_fullres] [--fold 0] -o OUT

For the teacher's model folder and every finished run of RUNS (filed as nnkd_benchmark and the study scripts
file them: RUNS/<run name>/<dataset>/<model folder>/fold_<F>), the fold's validation cases (the names in
fold_<F>/validation) are predicted again with nnU-Net's predictor, without mirroring, keeping the probabilities.
Per case, against labelsTr and the first channel of imagesTr:
- false positives of the class (voxels predicted as it, labelled otherwise) and the labels they carry;
- how far they lie from the labelled class (median Euclidean distance in voxels; 1 = touching it);
- look-alikes: background voxels whose intensity is nearer the class's median intensity in the case than the
  background's, farther than 1 voxel from the class (the structures a model must tell apart by
  shape or context, such as an organ's unlabelled neighbour of similar intensity): how many false positives
  fall on them, and the model's mean probability of the class there.
Writes OUT/results.json and OUT/report.md.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage


def where_false(predicted: np.ndarray, probability: np.ndarray, reference: np.ndarray, image: np.ndarray,
                label: int) -> dict:
    """False positives of `label` and the model's view of look-alike background voxels (see the module doc)."""
    false = (predicted == label) & (reference != label)
    inside = reference == label
    distance = ndimage.distance_transform_edt(~inside) if inside.any() else np.full(reference.shape, np.inf)
    if inside.any():
        background = reference == 0
        own, other = np.median(image[inside]), np.median(image[background]) if background.any() else -np.inf
        lookalike = background & (np.abs(image - own) < np.abs(image - other)) & (distance > 1)
    else:
        lookalike = np.zeros(reference.shape, dtype=bool)
    labels = np.bincount(reference[false].astype(np.int64), minlength=int(reference.max()) + 1)
    return {"false_positives": int(false.sum()),
            "false_positives_by_label": {str(i): int(n) for i, n in enumerate(labels) if n},
            "median_distance": float(np.median(distance[false])) if false.any() else None,
            "lookalike_voxels": int(lookalike.sum()),
            "false_positives_on_lookalikes": int((false & lookalike).sum()),
            "probability_on_lookalikes": float(probability[lookalike].mean()) if lookalike.any() else None}


def summarise(cases: dict[str, dict]) -> dict:
    """Means over cases (a case without look-alikes or false positives left out of the means it lacks)."""
    def mean(key):
        values = [c[key] for c in cases.values() if c[key] is not None]
        return float(np.mean(values)) if values else None

    return {key: mean(key) for key in ("false_positives", "median_distance", "lookalike_voxels",
                                       "false_positives_on_lookalikes", "probability_on_lookalikes")}


def report(result: dict) -> str:
    name = result["class_name"]
    lines = [f"# False {name} voxels: where they lie", "",
             f"Fold {result['fold']} validation cases ({len(result['cases'])}), predicted without mirroring. "
             f"Look-alikes: background voxels whose intensity is nearer the {name}'s median than the background's "
             f"(per case), more than 1 voxel from the {name}.", "",
             f"| model | false {name} voxels / case | on look-alikes | median distance to the {name} (voxels) "
             f"| look-alike voxels / case | mean p({name}) on look-alikes |",
             "|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    for model in result["models"]:
        s = model["summary"]
        lines.append(f"| {model['name']} | {fmt(s['false_positives'], '.0f')} | "
                     f"{fmt(s['false_positives_on_lookalikes'], '.0f')} | {fmt(s['median_distance'], '.1f')} | "
                     f"{fmt(s['lookalike_voxels'], '.0f')} | {fmt(s['probability_on_lookalikes'], '.3f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--class", dest="label", type=int, required=True, help="the label whose false positives")
    parser.add_argument("--teacher", type=Path, default=None, help="the teacher's model folder")
    parser.add_argument("--runs", type=Path, nargs="+", default=[], help="folders of student runs")
    parser.add_argument("-d", default="990", help="dataset ID or name (its imagesTr and labelsTr)")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("--fold", default="0")
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from ensemble_stretch import finished_runs, predictor_for, raw_dataset, write_outputs
    from nnkd.records import software_versions

    torch.set_num_threads(1)
    dataset, raw, dataset_json = raw_dataset(args.d)
    ending = dataset_json["file_ending"]
    names = {int(v): k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    models = ([("teacher", args.teacher)] if args.teacher else []) + finished_runs(args.runs, dataset, args.c,
                                                                                   args.fold)
    if not models:
        parser.error("no model: give --teacher or --runs with finished runs")
    validation = models[0][1] / f"fold_{args.fold}" / "validation"
    cases = sorted(p.name[: -len(ending)] for p in validation.glob(f"*{ending}"))
    if not cases:
        parser.error(f"no validation cases in {validation}")
    io = SimpleITKIO()
    data = {c: (io.read_images([str(raw / "imagesTr" / f"{c}_0000{ending}")]),
                io.read_seg(str(raw / "labelsTr" / f"{c}{ending}"))[0][0]) for c in cases}
    result = {"settings": {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in vars(args).items()},
              "versions": software_versions(), "dataset": dataset, "fold": args.fold, "label": args.label,
              "class_name": names.get(args.label, str(args.label)), "cases": cases, "models": []}
    for name, folder in models:
        predictor, _ = predictor_for(folder, [args.fold], args.c, mirroring=False)
        per_case = {}
        for case, ((image, properties), reference) in data.items():
            with torch.no_grad():
                segmentation, probabilities = predictor.predict_single_npy_array(image, properties, None, None, True)
            per_case[case] = where_false(np.asarray(segmentation), probabilities[args.label], reference, image[0],
                                         args.label)
        result["models"].append({"name": name, "folder": str(folder), "cases": per_case,
                                 "summary": summarise(per_case)})
        print(f"{name}: {result['models'][-1]['summary']}", file=sys.stderr)
    write_outputs(args.o, result, report(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
