"""`nnkd_pseudo_label`: an nnU-Net raw dataset whose labels are a teacher's predictions, for distilling a
pretrained model with no annotation at all.

nnU-Net plans, preprocesses and trains only datasets with `labelsTr`. A user with images and a public
pretrained model (deepbet, an nnU-Net model folder, a TorchScript network) has no labels; this writes a new
dataset — the images copied as they are, `labelsTr` (and `labelsTs` for `imagesTs`) the teacher's segmentation
of each whole case — that `nnkd_plan_and_preprocess` and `nnkd_train` then take like any other.

How the teacher segments a whole case:
- an nnU-Net model folder (`nnunet:` teacher): nnU-Net's own prediction of the folder (its preprocessing and
  plans, sliding window, every trained fold as an ensemble unless the spec names `fold` / `folds`, mirroring
  unless `--disable_tta`), exactly as `nnUNetv2_predict` would segment the images;
- any other family: the image read by nnU-Net's reader for the file ending, each channel z-scored over the
  whole image (nnU-Net's default normalisation; the teacher maps intensities its own way from there), one
  forward pass of the teacher on the whole volume (its spec's `size` / `zoom` / `axes` options adapt it to the
  input the model wants), the argmax written on the image's grid.

The dataset appears complete or not at all (staging folder, then rename); the source images are only read.
`nnkd_pseudo_labels.json` beside `dataset.json` records the teacher, the source and each case's share of
foreground voxels; a case whose segmentation is empty is named in a warning (the teacher may not fit the data).
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnkd.datasets.raw import staged_raw_dataset
from nnkd.errors import NnkdError
from nnkd.folds import numbered_or_all, trained_folds
from nnkd.inference.inputs import collect_cases
from nnkd.nnunet_env import find_dataset_name, raw_dataset_json, require_env
from nnkd.outputs import OutputLock
from nnkd.teachers.nnunet import DEFAULTS as NNUNET_OPTIONS
from nnkd.teacher_spec import TeacherSpec
from nnkd.teachers.registry import create_teacher, parse_options

MANIFEST = "nnkd_pseudo_labels.json"
PARTIAL = "nnkd_pseudo_labels.partial.json"  # the request an unfinished run was labelling for


@dataclass
class PseudoLabelRequest:
    dataset_id: int
    teacher: str
    images: Path | None = None  # a folder of CASE_XXXX<ending> images (with `test_images`: imagesTs)
    test_images: Path | None = None
    source_dataset: str | int | None = None  # take imagesTr / imagesTs and channel names from this raw dataset
    name: str = "PseudoLabels"
    channel_names: dict = field(default_factory=dict)  # {"0": "T1"}; default from the source, else "image"
    labels: list[str] = field(default_factory=list)  # names of the teacher's classes, background first
    file_ending: str = ".nii.gz"
    mirroring: bool = True
    device: str = "cpu"
    num_processes: int = 1
    overwrite: bool = False


@dataclass
class _Source:
    train: Path
    test: Path | None
    channel_names: dict
    file_ending: str
    description: str


def _source(request: PseudoLabelRequest, raw_root: Path) -> _Source:
    if (request.images is None) == (request.source_dataset is None):
        raise NnkdError("give either a folder of images (-i) or a source dataset (--from-dataset)",
                        "one of the two says which images the teacher segments")
    if request.source_dataset is not None:
        if request.test_images is not None:
            raise NnkdError("test images go with a folder of images (-i)", "a source dataset brings its own imagesTs")

        folder = raw_root / find_dataset_name(request.source_dataset)
        dataset_json = raw_dataset_json(folder)
        test = folder / "imagesTs"
        return _Source(folder / "imagesTr", test if test.is_dir() and any(test.iterdir()) else None,
                       request.channel_names or dict(dataset_json["channel_names"]), dataset_json["file_ending"],
                       f"the images of {folder.name} (its labels unread)")
    for folder in filter(None, (request.images, request.test_images)):
        if not Path(folder).is_dir():
            raise NnkdError(f"image folder {folder} not found", "give the folder with your images")
    return _Source(Path(request.images), Path(request.test_images) if request.test_images else None,
                   dict(request.channel_names), request.file_ending, f"the images of {request.images}")


def _labels(names: list[str], teacher_labels: dict | None, spec: str) -> dict:
    """dataset.json's labels: the names given (one per class of the teacher, when it names its own), else the
    teacher's own."""
    if names:
        if len(names) < 2 or names[0] != "background":
            raise NnkdError(f"--labels {' '.join(names)} must start with background and name at least one class",
                            "e.g. --labels background brain")
        if teacher_labels and len(names) != len(teacher_labels):
            raise NnkdError(f"--labels names {len(names)} classes, the teacher has {len(teacher_labels)} "
                            f"({', '.join(teacher_labels)})",
                            "give one name per class of the teacher, background first, or leave --labels out")
        return {name: i for i, name in enumerate(names)}
    if teacher_labels:
        return {str(k): int(v) for k, v in teacher_labels.items()}
    raise NnkdError(f"the teacher {spec} does not name its classes",
                    "give them with --labels background NAME …, one per output channel")


class WholeCaseTeacher:
    """A teacher of any family segmenting a whole image, read and written on its own grid."""

    def __init__(self, teacher, file_ending: str, device: torch.device):
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

        self.teacher = teacher.to(device)
        self.device = device
        self.io = determine_reader_writer_from_file_ending(file_ending)()

    def segment(self, files: list[str]) -> tuple[np.ndarray, dict]:
        """The teacher's segmentation of one case (its channel files) and the case's properties."""
        image, properties = self.io.read_images(files)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32))
        dims = tuple(range(1, x.ndim))
        x = (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True).clamp_min(1e-8)
        flat = self.teacher.spatial_dims == 2 and x.shape[1] == 1  # a 2D image, read as (C, 1, Y, X)
        with torch.no_grad():
            logits = self.teacher((x[:, 0] if flat else x)[None].to(self.device)).logits
        if logits is None:
            raise NnkdError(f"the teacher {self.teacher.spec} gives features only, no segmentation",
                            "pseudo-labels need a teacher with logits (a segmentation model)")
        segmentation = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
        return (segmentation[None] if flat else segmentation), properties

    def __call__(self, files: list[str], output: Path) -> np.ndarray:
        segmentation, properties = self.segment(files)
        self.io.write_seg(segmentation, str(output), properties)
        return segmentation


def _nnunet_predictor(spec: TeacherSpec, mirroring: bool, device: torch.device):
    """nnU-Net's own predictor around an nnU-Net model folder's networks (loaded by nnkd's nnunet teacher with
    weights_only=True; no trainer class imported), over the folds the spec names or every fold it has."""
    from nnkd.inference.predict import make_predictor

    options = parse_options("nnunet", spec.options, NNUNET_OPTIONS)
    chosen = {k: spec.options[k] for k in ("fold", "folds") if options[k]}
    if not chosen:  # every trained numbered fold, as nnUNetv2_predict does; else fold_all
        folds = numbered_or_all(trained_folds(Path(spec.path).expanduser(), options["checkpoint"]))
        chosen = {"fold": "all"} if folds == ["all"] else {"folds": ",".join(folds)} if folds else {}
    if not chosen:
        raise NnkdError(f"no fold of {spec.path} has {options['checkpoint']}", "train the teacher first or give ?fold=")
    teacher = create_teacher(TeacherSpec(spec.family, spec.path, {**spec.options, **chosen}, spec.text), device=device)
    folds = tuple(chosen.get("folds", chosen.get("fold", "")).split(","))
    networks = list(teacher.networks)
    predictor = make_predictor(teacher.plans, teacher.configuration, teacher.dataset_json,
                               [n.state_dict() for n in networks], networks[0], teacher.mirror_axes, device,
                               use_mirroring=mirroring)
    predictor.allow_tqdm = False
    return predictor, folds


def check_replaced_dataset(target: Path, overwrite: bool, inputs: list) -> None:
    """`--overwrite` replaces only a dataset nnkd_pseudo_label wrote (its MANIFEST beside dataset.json), and never
    the one the source images are read from."""
    if not (overwrite and target.exists()):
        return
    if not (target / MANIFEST).is_file():
        raise NnkdError(f"{target} was not written by nnkd_pseudo_label",
                        "pick another -d and --name; --overwrite replaces only a dataset nnkd_pseudo_label wrote")
    resolved = target.resolve()
    for given in inputs:
        if given is not None and (Path(given).resolve() == resolved or resolved in Path(given).resolve().parents):
            raise NnkdError(f"the images {given} are inside {target}, which --overwrite would replace",
                            "copy the images elsewhere first, or pick another -d and --name")


def _label_split(staging: Path, split: str, cases: dict, ending: str, predictor, segment, num_processes: int) -> None:
    """Label one split's cases not labelled by an earlier run: nnU-Net's `predictor` on them all at once, or
    `segment` case by case; each case's images are copied first and its label moved in last (a case is done when
    its label is there)."""
    done = {c for c in cases if _case_done(staging, split, c, len(cases[c]), ending)}
    if done:
        print(f"{len(done)} of {len(cases)} {split} case(s) already labelled by an earlier run: skipped")
    todo = {c: files for c, files in cases.items() if c not in done}
    targets = {case: staging / f"labels{split}" / f"{case}{ending}" for case in todo}
    predicted = staging / f".predicted{split}"
    shutil.rmtree(predicted, ignore_errors=True)
    if predictor is not None and todo:  # nnU-Net writes its plans and arguments beside the segmentations
        predictor.predict_from_files([todo[c] for c in todo], [str(predicted / c) for c in todo],
                                     save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=num_processes,
                                     num_processes_segmentation_export=num_processes)
    predicted.mkdir(exist_ok=True)
    for case in tqdm(todo, desc=f"pseudo-labels {split}", unit="case"):
        for c, file in enumerate(todo[case]):
            _copy(Path(file), staging / f"images{split}" / f"{case}_{c:04d}{ending}")
        if predictor is None:
            segment(todo[case], predicted / targets[case].name)
        os.replace(predicted / targets[case].name, targets[case])
    shutil.rmtree(predicted)


def pseudo_label(request: PseudoLabelRequest) -> Path:
    """Write $nnUNet_raw/DatasetXXX_<name> with the teacher's segmentations as labels; returns its folder."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    from nnkd.devices import resolve_device

    raw_root = require_env("nnUNet_raw")["nnUNet_raw"]
    source = _source(request, raw_root)
    spec = TeacherSpec.parse(request.teacher)
    device = resolve_device(request.device)
    predictor = segment = None
    if spec.family == "nnunet":
        predictor, folds = _nnunet_predictor(spec, request.mirroring, device)
        source.channel_names = source.channel_names or dict(predictor.dataset_json["channel_names"])
    source.channel_names = source.channel_names or {"0": "image"}
    reader = determine_reader_writer_from_file_ending(source.file_ending)()
    splits = {"Tr": collect_cases(source.train, source.file_ending, len(source.channel_names), reader)}
    if source.test is not None:
        splits["Ts"] = collect_cases(source.test, source.file_ending, len(source.channel_names), reader)
    if spec.family == "nnunet":
        labels = _labels(request.labels, predictor.dataset_json["labels"], spec.text)
        how = (f"nnU-Net's prediction of the model folder, folds {', '.join(map(str, folds))}, "
               f"{'with' if request.mirroring else 'without'} mirroring")
        if predictor.dataset_json["file_ending"] != source.file_ending:
            raise NnkdError(f"the teacher reads {predictor.dataset_json['file_ending']} images, these are "
                            f"{source.file_ending}", "convert the images to the teacher's file format")
    else:
        teacher = create_teacher(spec, device=device)
        labels = _labels(request.labels, teacher.labels, spec.text)
        segment = WholeCaseTeacher(teacher, source.file_ending, device)
        how = "one forward pass of the teacher on each whole image (z-scored per channel)"
    folder_name = f"Dataset{request.dataset_id:03d}_{request.name}"
    check_replaced_dataset(raw_root / folder_name, request.overwrite, [source.train, source.test])
    manifest = {"teacher": spec.text, "source": source.description, "how": how, "labels": labels, "cases": {}}
    with OutputLock(raw_root / folder_name, "nnkd_pseudo_label"), \
            staged_raw_dataset(raw_root, request.dataset_id, folder_name, request.overwrite, resumable=True) as staging:
        _resume_or_restart(staging, manifest)
        for split, cases in splits.items():
            _label_split(staging, split, cases, source.file_ending, predictor, segment, request.num_processes)
            for case in cases:
                segmentation = reader.read_seg(str(staging / f"labels{split}" / f"{case}{source.file_ending}"))[0][0]
                manifest["cases"][case] = {"split": split, "foreground": {
                    name: float(np.mean(segmentation == value)) for name, value in labels.items() if value}}
        empty = [c for c, entry in manifest["cases"].items() if not any(entry["foreground"].values())]
        if empty:
            print(f"nnkd: warning: the teacher found no foreground in {len(empty)} case(s): {', '.join(empty[:5])}"
                  f"{' …' if len(empty) > 5 else ''} — check that the teacher's spec fits these images",
                  file=sys.stderr)
        dataset_json = {"channel_names": source.channel_names, "labels": labels,
                        "numTraining": len(splits["Tr"]), "file_ending": source.file_ending,
                        "description": f"labels: {spec.text} ({how}) on {source.description}"}
        (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=4) + "\n")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (staging / PARTIAL).unlink()
    return raw_root / folder_name



def _resume_or_restart(staging: Path, manifest: dict) -> None:
    """Keep what an earlier, interrupted run of the same request labelled; anything else in the staging folder
    (another teacher, source or labels) is discarded."""
    record = staging / PARTIAL
    request = {k: manifest[k] for k in ("teacher", "source", "how", "labels")}
    if record.is_file() and json.loads(record.read_text()) != request:
        print(f"note: {staging.name} holds an unfinished run of another request; starting over")
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            shutil.rmtree(staging / sub, ignore_errors=True)
            (staging / sub).mkdir()
    record.write_text(json.dumps(request) + "\n")


def _case_done(staging: Path, split: str, case: str, channels: int, ending: str) -> bool:
    return (staging / f"labels{split}" / f"{case}{ending}").is_file() and all(
        (staging / f"images{split}" / f"{case}_{c:04d}{ending}").is_file() for c in range(channels))


def _copy(source: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: a killed copy never looks complete."""
    partial = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
