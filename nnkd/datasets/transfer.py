"""TS-KD transfer sets: unlabelled and synthetic cases stored exactly like nnU-Net's preprocessed data.

A transfer set is what TS-KD's second step distils on besides the labelled training cases: images without
labels, on which the student learns from the teacher alone (KD only). Layout, beside nnU-Net's preprocessed data:

    $nnUNet_preprocessed/DatasetXXX/nnkd_transfer/<plans>__<data identifier>/<set name>/
        <case>.b2nd  <case>_seg.b2nd  <case>.pkl      nnU-Net's own case files (or .npz + .pkl)
        nnkd/transfer.json                            the manifest: kind, source, count, how the set was made
        nnkd/samples.png  nnkd/diffusion.pt           synthetic sets: sample grid and diffusion checkpoint

The set folder holds nothing but case files, so `infer_dataset_class` picks nnU-Net's dataset class for it and
nnU-Net's dataset and data loader read it unchanged; nnkd's own files live in the `nnkd/` sub-folder, which
nnU-Net's dataset classes never list. `<plans>` is the plans that own the preprocessed data: nnKD student plans
resolve to their teacher plans, whose data they share.

The cases carry no labels. Their segmentation is what nnU-Net's preprocessor makes for an image without one:
0 inside the image's nonzero mask, -1 outside (synthetic cases: 0 everywhere). nnU-Net's transforms need it
(masking for `use_mask_for_norm`, -1 → 0), and `class_locations` lists every foreground class with no
locations, so nnU-Net's loader draws random crops even when asked for foreground. A trainer must not put a
segmentation loss on these cases: the 0 means "unlabelled", not "background".
"""

import contextlib
import io
import json
import multiprocessing
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import (comp_blosc2_params, file_ending_dataset_mapping,
                                                          infer_dataset_class, nnUNetDatasetBlosc2)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnkd import __version__
from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError
from nnkd.nnunet_compat import sample_foreground_locations
from nnkd.plans import PreprocessedConfiguration

TRANSFER_FOLDER = "nnkd_transfer"
META_FOLDER = "nnkd"
MANIFEST = "transfer.json"
SEGMENTATION_NOTE = "no labels: 0 in the image (-1 outside an unlabelled image's nonzero mask); KD only"
DATASET_CLASSES = {cls.__name__: cls for cls in file_ending_dataset_mapping.values()}


def transfer_root(config: PreprocessedConfiguration) -> Path:
    """The folder of a configuration's transfer sets (students share their teacher plans' sets)."""
    return config.folder / TRANSFER_FOLDER / f"{config.data_plans_name}__{config.configuration_manager.data_identifier}"


def named_set(config: PreprocessedConfiguration, name: str) -> "TransferSet":
    """The named set of a configuration (it need not exist yet)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise NnkdError(f"'{name}' is not a valid transfer-set name", "use letters, digits, '_', '-' or '.'")
    return TransferSet(transfer_root(config) / name)


def unlabeled_class_locations(seg: np.ndarray, plans_manager: PlansManager, dataset_json: dict) -> dict:
    """`class_locations` as nnU-Net's preprocessor computes them, for a segmentation without labels: every
    foreground class or region is there with no locations (the loader then crops at random); with an ignore label
    the "annotated" key lists voxels of the image, as the loader expects."""
    label_manager = plans_manager.get_label_manager(dataset_json)
    keys = list(label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels)
    if label_manager.has_ignore_label:
        keys.append([-1] + label_manager.all_labels)
    return sample_foreground_locations(seg, keys)


class TransferSet:
    """One transfer-set folder: its cases, its manifest, atomic case writes, and opening it for nnU-Net."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta_folder = self.folder / META_FOLDER
        path = self.meta_folder / MANIFEST
        try:
            self.manifest = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError as e:
            raise NnkdError(f"{path} is corrupt", f"delete {self.folder} and make the set again") from e

    def __repr__(self) -> str:
        return f"TransferSet({str(self.folder)!r}, kind={self.kind!r}, count={self.manifest.get('count', 0)})"

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def kind(self) -> str | None:
        return self.manifest.get("kind")

    def cases(self) -> list[str]:
        """The set's cases as nnU-Net's dataset class lists them."""
        if not self.folder.is_dir() or not any(p.is_file() for p in self.folder.iterdir()):
            return []
        return sorted(infer_dataset_class(str(self.folder)).get_identifiers(str(self.folder)))

    def open(self, cases: Sequence[str] | None = None):
        """nnU-Net's dataset class for this folder (as `infer_dataset_class` picks it), over all or some cases."""
        if not self.cases():
            raise NnkdError(f"transfer set {self.folder} has no cases", "add cases first (nnkd_synthesize, "
                                                                        "nnkd.datasets.transfer.add_unlabeled)")
        return infer_dataset_class(str(self.folder))(str(self.folder), None if cases is None else list(cases))

    def has_case(self, case: str) -> bool:
        """The case is complete and nnU-Net's dataset class reads it."""
        cls = DATASET_CLASSES.get(self.manifest.get("dataset_class"))
        if cls is None or not (self.folder / f"{case}.pkl").is_file():
            return False
        try:
            data, seg, _, properties = cls(str(self.folder), [case]).load_case(case)
            return data.shape[1:] == seg.shape[1:] and "class_locations" in properties
        except Exception:  # any read failure (truncated, foreign or corrupt file) means: make it again
            return False

    def check(self, kind: str, config: PreprocessedConfiguration) -> None:
        """Stop unless the set is new (a folder with nothing but nnkd's own files, or none) or holds `kind`
        cases of this configuration."""
        identity = {**config.identity(), "dataset_class": config.dataset_class.__name__}
        if self.manifest:
            if self.manifest.get("kind") != kind:
                raise NnkdError(f"transfer set {self.folder} holds {self.manifest.get('kind')} cases, not {kind}",
                                "choose another set name or folder")
            made_for = {k: self.manifest.get(k) for k in identity}
            if made_for != identity:
                raise NnkdError(f"transfer set {self.folder} was made for {made_for}, not {identity}",
                                "choose another set name or folder for this dataset/plans/configuration")
        elif self.folder.is_dir() and any(p.name != META_FOLDER for p in self.folder.iterdir()):
            raise NnkdError(f"{self.folder} is not empty and is not a transfer set",
                            "give an empty or new folder, or an existing transfer set")

    def start(self, kind: str, config: PreprocessedConfiguration, **how) -> None:
        """Create the set (or continue an existing one of `kind` and this configuration) and record `how`."""
        self.check(kind, config)
        self.manifest.update(kind=kind, **config.identity(), dataset_class=config.dataset_class.__name__,
                             segmentation=SEGMENTATION_NOTE, nnkd_version=__version__, **how)
        self.manifest.setdefault("cases", {})
        self.manifest["count"] = len(self.manifest["cases"])
        self.meta_folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.meta_folder / MANIFEST, self.manifest)

    def write_case(self, case: str, data: np.ndarray, seg: np.ndarray, properties: dict,
                   config: PreprocessedConfiguration) -> None:
        """Save one case with nnU-Net's dataset class into a staging folder, then rename its files into the set,
        the file nnU-Net lists cases by last: a kill leaves the case complete or absent to nnU-Net."""
        cls = config.dataset_class
        staging = self.meta_folder / f".staging-{case}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            data = np.ascontiguousarray(data, dtype=np.float32)
            seg = np.ascontiguousarray(seg, dtype=np.int16)  # as nnU-Net's run_case_save stores it
            truncated = str(staging / case)
            if issubclass(cls, nnUNetDatasetBlosc2):
                patch = tuple(config.configuration_manager.patch_size)
                blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
                blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
                cls.save_case(data, seg, properties, truncated, chunks=chunks, blocks=blocks,
                              chunks_seg=chunks_seg, blocks_seg=blocks_seg)
            else:
                cls.save_case(data, seg, properties, truncated)
            listing_last = sorted(staging.iterdir(), key=lambda p: p.name.startswith(f"{case}.") and p.suffix != ".pkl")
            for path in listing_last:
                os.replace(path, self.folder / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def record_case(self, case: str, entry: dict) -> None:
        self.manifest["cases"][case] = entry
        self.manifest["count"] = len(self.manifest["cases"])
        write_json_atomic(self.meta_folder / MANIFEST, self.manifest)


def transfer_set(dataset: str | int, name: str, plans: str = "nnUNetPlans",
                 configuration: str = "3d_fullres") -> TransferSet:
    """The named set of a dataset's plans configuration (it need not exist yet)."""
    return named_set(PreprocessedConfiguration.load(dataset, plans, configuration, need_data=True), name)


def list_transfer_sets(dataset: str | int, plans: str = "nnUNetPlans",
                       configuration: str = "3d_fullres") -> list[TransferSet]:
    """Every set of a dataset's plans configuration, by name."""
    root = transfer_root(PreprocessedConfiguration.load(dataset, plans, configuration, need_data=True))
    if not root.is_dir():
        return []
    return [TransferSet(p) for p in sorted(root.iterdir()) if (p / META_FOLDER / MANIFEST).is_file()]


# ---------------------------------------------------------------- unlabelled images


def _group_images(images_dir: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Image files named like nnU-Net's imagesTr (CASE_XXXX<ending>, one file per channel), checked complete."""
    if not images_dir.is_dir():
        raise NnkdError(f"image folder {images_dir} not found", "give a folder of CASE_0000" + file_ending + " files")
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        if not path.name.endswith(file_ending) or path.name.startswith("."):
            continue
        match = pattern.match(path.name)
        if match is None:
            raise NnkdError(f"{path} is not named CASE_XXXX{file_ending}",
                            "name images like nnU-Net's imagesTr: one file per channel, CASE_0000" + file_ending)
        cases.setdefault(match.group(1), {})[int(match.group(2))] = path
    if not cases:
        raise NnkdError(f"no {file_ending} images in {images_dir}",
                        f"give a folder of CASE_0000{file_ending} files (the dataset's file ending)")
    expected = list(range(num_channels))
    for case, channels in cases.items():
        if sorted(channels) != expected:
            found = ", ".join(f"{c:04d}" for c in sorted(channels))
            raise NnkdError(f"case {case} in {images_dir} has channel file(s) {found}, the dataset has "
                            f"{num_channels} channel(s) ({', '.join(f'{c:04d}' for c in expected)})",
                            "give every case exactly the dataset's channels")
    return {case: [channels[c] for c in expected] for case, channels in cases.items()}


def _check_readable(case: str, files: list[Path], config: PreprocessedConfiguration) -> None:
    """Read a case the way preprocessing will; one clear error naming the file otherwise."""
    reader = config.plans_manager.image_reader_writer_class()
    quiet = contextlib.redirect_stdout(io.StringIO())  # nnU-Net's readers print their complaints
    try:
        with quiet:
            data, _ = reader.read_images([str(f) for f in files])
    except Exception as e:
        for f in files:
            try:
                with quiet:
                    reader.read_images([str(f)])
            except Exception as single:
                raise NnkdError(f"{f} is not a readable image ({type(single).__name__}: {single})".replace("\n", " "),
                                "replace or remove it") from single
        raise NnkdError(f"the channel files of case {case} do not fit together (shape, spacing or orientation)",
                        "give every channel of a case on the same grid") from e
    if data.shape[0] != config.num_channels:
        raise NnkdError(f"case {case} reads as {data.shape[0]} channel(s), the dataset has {config.num_channels}",
                        "give one single-channel image file per channel")


def _preprocess_and_write(job: tuple) -> str:
    """Preprocess one case as nnUNetPredictor does for raw images and write it into the set (a worker's task)."""
    folder, case, files, config = job
    manager = config.plans_manager
    preprocessor = config.configuration_manager.preprocessor_class(verbose=False)
    data, seg, properties = preprocessor.run_case([str(f) for f in files], None, manager,
                                                  config.configuration_manager, config.dataset_json)
    properties["class_locations"] = unlabeled_class_locations(seg, manager, config.dataset_json)
    properties["nnkd_transfer"] = "unlabeled"
    TransferSet(folder).write_case(case, data, seg, properties, config)
    return case


def add_unlabeled(dataset: str | int, images_dir: str | Path, plans: str = "nnUNetPlans",
                  configuration: str = "3d_fullres", name: str = "unlabeled", num_processes: int = 1) -> Path:
    """Preprocess a folder of unlabelled images (named like imagesTr) with the dataset's plans, by nnU-Net's own
    preprocessor, into a transfer set; return the set's folder. Every image is checked first, so bad input writes
    nothing; cases already in the set are skipped. Reads the images where they are, never writes to nnUNet_raw."""
    config = PreprocessedConfiguration.load(dataset, plans, configuration, need_data=True)
    images_dir = Path(images_dir).resolve()
    tset = named_set(config, name)
    tset.check("unlabeled", config)
    cases = _group_images(images_dir, config.dataset_json["file_ending"], config.num_channels)
    todo = {case: files for case, files in cases.items() if not tset.has_case(case)}
    for case, files in tqdm(todo.items(), desc="Checking images", unit="case", disable=not todo):
        _check_readable(case, files, config)
    sources = sorted(set(tset.manifest.get("source", [])) | {str(images_dir)})
    tset.start("unlabeled", config, source=sources,
               made_with=f"nnU-Net's {config.configuration_manager.preprocessor_class.__name__}.run_case with the "
                         f"plans '{plans}', configuration '{configuration}' (as nnUNetPredictor preprocesses images)")
    print(f"nnkd: {len(cases) - len(todo)} of {len(cases)} case(s) already in {tset.folder}; "
          f"preprocessing {len(todo)}")
    jobs = [(tset.folder, case, files, config) for case, files in todo.items()]
    with contextlib.ExitStack() as stack:
        if num_processes > 1 and len(jobs) > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))))
            done = pool.imap_unordered(_preprocess_and_write, jobs)
        else:
            done = map(_preprocess_and_write, jobs)
        for case in tqdm(done, total=len(jobs), desc="Preprocessing unlabelled cases", unit="case", disable=not jobs):
            tset.record_case(case, {"images": [str(f) for f in todo[case]]})
    return tset.folder
