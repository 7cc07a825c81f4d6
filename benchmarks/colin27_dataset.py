"""A real-data brain-extraction dataset: warped variations of the Colin27 T1 and its brain mask.

    python benchmarks/colin27_dataset.py -d 995 [--cases 20] [--test-cases 4] [--seed 0]
                                         [--deb PATH] [--cache DIR] [--overwrite]

Data. The single real volume comes from Debian's `mricron-data` package (fetched with
`apt-get download mricron-data`, or given with --deb, and unpacked with `dpkg -x`, or by reading the
.deb's ar archive in Python where dpkg is missing): `ch2.nii.gz`, the Colin27 whole-head T1 (181×217×181
at 1 mm, uint8), and `ch2bet.nii.gz`, the same T1 skull-stripped by BET (ch2's intensities inside the
brain, 0 outside). The label is `ch2bet > 0`, largest connected component (≈ 1737 ml; the ~100 tiny
islands outside it are dropped). The two files are cached under `$nnUNet_raw/../nnkd_sources/mricron-data/`
(or --cache), so reruns download nothing; nothing is written into the repository.

Cases. Each case is one random variation of that volume, image and mask warped together with one
mapping, deterministic for (--seed, split, case index):
  - affine: rotation about a random axis by up to 15°, global scale 0.9–1.1 times a per-axis 0.96–1.04,
    translation ±10 mm (about the brain's centre);
  - elastic: a smooth displacement field (cubic spline through random control points ~40 mm apart) with
    a maximum of 1.5–4 mm;
  - acquisition grid: in-plane spacing 1.4–1.8 mm; 35 % of the cases isotropic, the others with one thick
    axis (sagittal, coronal or axial, drawn per case) of 2.5–3.5 mm whose slab profile is simulated by
    averaging sub-samples across the slab (partial volume); a light Gaussian anti-aliasing of the 1 mm
    source first;
  - field of view: the brain's box plus 5–35 mm per side, never past the head (the source FOV ends at the
    neck, so some cases cut the brainstem as real scans do; a rotated case shows a dark wedge of noise
    where its grid leaves the source volume), hence ~90–150 voxels per in-plane axis and ~50–85 along a
    thick axis, 0.5–2 M voxels per case (seed 0: from 52×59×55 to 138×152×129);
  - intensities: gamma 0.7–1.4, scanner scale 400–2500, a smooth multiplicative bias field of ±20–30 %,
    Rician noise with σ 1–4 % of the scale; stored as int16.
  - label: the float brain mask sampled by the same mapping (linear, slab-averaged), threshold 0.5.
All cases keep Colin27's direction matrix (RAS-oriented voxel axes); spacing and origin are written so
that every voxel sits at its true physical position.

Output: `$nnUNet_raw/DatasetXXX_Colin27BET/` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json, and
`colin27_cases.json` with each case's drawn parameters), written in a hidden staging folder and moved
into place at the end; an existing dataset is replaced only with --overwrite.

About 2 s per case on 2 CPU cores (24 cases: ~1 min, ~35 MB).

How deepbet must be fed was measured once with seed 0 (the retired `--check-teacher`, `git show
636c26a:benchmarks/colin27_dataset.py`): voxel axes in RAS order (the SimpleITK array transposed (2, 1, 0))
and a whole head at ~1 mm: size 192³ gives 0.939 against BET (deepbet's own pipeline 0.938), the (z, y, x)
array 0.891, LPS 0.913; 128³ gives 0.85–0.86 and the native ~1.6 mm grid 0.59–0.64.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from tqdm import tqdm

from nnkd.datasets.raw import staged_raw_dataset
from nnkd.errors import NnkdError

PACKAGE = "mricron-data"
HEAD, BRAIN = "ch2.nii.gz", "ch2bet.nii.gz"
NAME = "Colin27BET"
LABELS = {"background": 0, "brain": 1}

ROTATION_DEG = 15.0
SCALE = (0.9, 1.1)
SCALE_PER_AXIS = (0.96, 1.04)
TRANSLATION_MM = 10.0
ELASTIC_CONTROL_MM = 40.0
ELASTIC_MAX_MM = (1.5, 4.0)
IN_PLANE_MM = (1.4, 1.8)
THICK_MM = (2.5, 3.5)
ISOTROPIC_FRACTION = 0.35
MARGIN_MM = (5.0, 35.0)
GAMMA = (0.7, 1.4)
SCANNER_SCALE = (400.0, 2500.0)
BIAS = (0.2, 0.3)
BIAS_CONTROL = 4
NOISE = (0.01, 0.04)
AXIS_NAMES = ("axial", "coronal", "sagittal")  # thick array axis 0, 1, 2 (z=S, y=A, x=R voxel axes)


# ----------------------------------------------------------------------------------------------- sources

def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def download_deb(folder: Path) -> Path:
    """`apt-get download mricron-data` into folder (with `apt-get update` first only if that fails)."""
    if shutil.which("apt-get") is None:
        raise NnkdError(f"apt-get is not available to download {PACKAGE}",
                        f"download {PACKAGE}_*_all.deb from https://packages.debian.org/{PACKAGE} "
                        "(any Debian or Ubuntu mirror) and pass --deb PATH")
    result = _run(["apt-get", "download", PACKAGE], folder)
    if result.returncode != 0:
        print(f"apt-get download failed ({(result.stderr.strip().splitlines() or ['?'])[-1]}); "
              "running apt-get update", flush=True)
        _run(["apt-get", "update"], folder)
        result = _run(["apt-get", "download", PACKAGE], folder)
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        last = (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise NnkdError(f"apt-get download {PACKAGE} failed: {last}",
                        f"download {PACKAGE}_*_all.deb from https://packages.debian.org/{PACKAGE} "
                        "and pass --deb PATH")
    return debs[-1]


def _data_tar(deb: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive), opened with tarfile."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise NnkdError(f"{deb} is not a Debian package (no ar header)", f"pass the {PACKAGE} .deb with --deb")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith("data.tar"):
            try:
                return tarfile.open(fileobj=io.BytesIO(blob[pos + 60:pos + 60 + size]), mode="r:*")
            except tarfile.ReadError as e:
                raise NnkdError(f"{deb}'s {name} cannot be read by Python's tarfile ({e})",
                                "install dpkg (apt-get install dpkg) so that dpkg -x can unpack it") from e
        pos += 60 + size + (size % 2)
    raise NnkdError(f"{deb} has no data.tar member", f"pass the {PACKAGE} .deb with --deb")


def extract_deb(deb: Path, dest: Path) -> None:
    """`dpkg -x deb dest`, or, without dpkg, the package's NIfTI and copyright files read in Python."""
    if shutil.which("dpkg"):
        result = _run(["dpkg", "-x", str(deb), str(dest)], dest)
        if result.returncode != 0:
            raise NnkdError(f"dpkg -x {deb} failed: {result.stderr.strip()[-200:]}",
                            f"pass an intact {PACKAGE} .deb with --deb")
        return
    with _data_tar(deb) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and ".." not in parts and (member.name.endswith(".nii.gz")
                                                          or parts[-1] == "copyright"):
                out = dest.joinpath(*[p for p in parts if p not in (".", "/")])
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())


def locate(root: Path, name: str) -> Path:
    """The file `name` inside an unpacked package (the shortest path where there are several)."""
    found = sorted(root.rglob(name), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise NnkdError(f"{name} is not in the unpacked {PACKAGE} package under {root}",
                        f"pass a {PACKAGE} .deb that ships the Colin27 templates with --deb")
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sources(cache: Path, deb: Path | None) -> tuple[dict[str, Path], dict]:
    """ch2.nii.gz and ch2bet.nii.gz in the cache folder, unpacked from the .deb (downloaded if not given)
    unless the cache already holds them; returns their paths and the provenance record."""
    record_file = cache / "source.json"
    cached = {n: cache / n for n in (HEAD, BRAIN)}
    if deb is None and all(p.is_file() for p in cached.values()) and record_file.is_file():
        for p in cached.values():
            print(f"cached: {p} ({p.stat().st_size / 1e6:.2f} MB)")
        return cached, json.loads(record_file.read_text())
    with tempfile.TemporaryDirectory(prefix="nnkd-mricron-") as tmp:
        tmp = Path(tmp)
        if deb is None:
            started = time.time()
            deb = download_deb(tmp)
            print(f"downloaded {deb.name} ({deb.stat().st_size / 1e6:.1f} MB) in {time.time() - started:.1f} s")
        elif not deb.is_file():
            raise NnkdError(f"--deb {deb} is not a file", f"give the path of a {PACKAGE}_*.deb")
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        extract_deb(deb, unpacked)
        record = {"package": deb.name, "deb_sha256": _sha256(deb), "files": {}}
        cache.mkdir(parents=True, exist_ok=True)
        copyright_files = sorted(unpacked.rglob(f"doc/{PACKAGE}/copyright"))
        for name in (HEAD, BRAIN):
            path = locate(unpacked, name)
            print(f"found {path.relative_to(unpacked)} in {deb.name} ({path.stat().st_size / 1e6:.2f} MB)")
            partial = cache / f".{name}.tmp-{os.getpid()}"
            shutil.copyfile(path, partial)
            os.replace(partial, cached[name])
            record["files"][name] = {"in_package": "/" + str(path.relative_to(unpacked)),
                                     "sha256": _sha256(cached[name])}
        if copyright_files:
            shutil.copyfile(copyright_files[0], cache / "copyright")
        partial = cache / f".source.json.tmp-{os.getpid()}"
        partial.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(partial, record_file)
    for p in cached.values():
        print(f"cached: {p}")
    return cached, record


# ------------------------------------------------------------------------------------------------ source

@dataclass
class Colin27:
    """The source volume in array order (z, y, x); millimetre positions `index × spacing` in that order."""

    image: np.ndarray  # float32, the head's 99.5th percentile → 1
    brain: np.ndarray  # float32 0/1
    spacing: np.ndarray  # (3,) mm, array order
    origin: np.ndarray  # (3,) physical, x y z (ITK's LPS)
    direction: np.ndarray  # (3, 3), columns = voxel axes x y z in LPS
    centre: np.ndarray  # brain centroid, mm, array order
    brain_points: np.ndarray  # (N, 3) mm, a subsample of brain voxels
    head_points: np.ndarray  # (N, 3) mm, a subsample of head voxels


def load_colin27(paths: dict[str, Path]) -> Colin27:
    head, brain = sitk.ReadImage(str(paths[HEAD])), sitk.ReadImage(str(paths[BRAIN]))
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        if not np.allclose(getattr(head, attribute)(), getattr(brain, attribute)(), atol=1e-4):
            raise NnkdError(f"{HEAD} and {BRAIN} are on different grids ({attribute[3:].lower()} differs)",
                            f"use an unmodified {PACKAGE} package")
    image = sitk.GetArrayFromImage(head).astype(np.float32)
    stripped = sitk.GetArrayFromImage(brain)
    components, count = ndi.label(stripped > 0)
    if count == 0:
        raise NnkdError(f"{BRAIN} is empty", f"use an unmodified {PACKAGE} package")
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    mask = ndi.binary_fill_holes(components == largest)
    image /= np.percentile(image[image > 0], 99.5)
    spacing = np.array(head.GetSpacing()[::-1], dtype=float)
    head_mask = ndi.binary_opening(image > 0.1, iterations=2)
    stride = (slice(None, None, 3),) * 3

    def points(m):
        return np.argwhere(m[stride]) * 3 * spacing

    return Colin27(image=image, brain=mask.astype(np.float32), spacing=spacing,
                   origin=np.array(head.GetOrigin()), direction=np.array(head.GetDirection()).reshape(3, 3),
                   centre=np.argwhere(mask).mean(0) * spacing, brain_points=points(mask),
                   head_points=points(head_mask))


# ------------------------------------------------------------------------------------------------- cases

def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def smooth_field(rng: np.random.Generator, shape, control, components: int = 1) -> np.ndarray:
    """Cubic-spline interpolation of random control values (grid `control` per axis) over `shape`."""
    grids = np.meshgrid(*[np.linspace(0, c - 1, n) for c, n in zip(control, shape)], indexing="ij", sparse=True)
    coords = np.stack(np.broadcast_arrays(*grids))
    values = rng.normal(size=(components, *control))
    return np.stack([ndi.map_coordinates(v, coords, order=3, mode="nearest") for v in values]).astype(np.float32)


def draw_parameters(rng: np.random.Generator) -> dict:
    isotropic = rng.uniform() < ISOTROPIC_FRACTION
    in_plane = rng.uniform(*IN_PLANE_MM)
    thick_axis = None if isotropic else int(rng.integers(3))
    spacing = [in_plane] * 3
    if thick_axis is not None:
        spacing[thick_axis] = rng.uniform(*THICK_MM)
    return {"rotation": random_rotation(rng, ROTATION_DEG),
            "scale": rng.uniform(*SCALE) * rng.uniform(*SCALE_PER_AXIS, size=3),
            "translation": rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, size=3),
            "elastic_max_mm": rng.uniform(*ELASTIC_MAX_MM),
            "spacing": np.array(spacing), "thick_axis": thick_axis,
            "margins": rng.uniform(*MARGIN_MM, size=(2, 3)),
            "gamma": float(np.exp(rng.uniform(np.log(GAMMA[0]), np.log(GAMMA[1])))),
            "scanner_scale": rng.uniform(*SCANNER_SCALE), "bias": rng.uniform(*BIAS),
            "noise": rng.uniform(*NOISE)}


def make_case(src: Colin27, rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image, dict]:
    """One variation: its int16 image, uint8 label (same grid) and the drawn parameters."""
    par = draw_parameters(rng)
    forward = par["rotation"] @ np.diag(par["scale"])  # source mm → output mm, about the brain centre
    inverse = np.linalg.inv(forward)
    shift = src.centre + par["translation"]

    def to_output(points):
        return (points - src.centre) @ forward.T + shift

    brain_out, head_out = to_output(src.brain_points), to_output(src.head_points)
    low = np.maximum(brain_out.min(0) - par["margins"][0], head_out.min(0))
    high = np.minimum(brain_out.max(0) + par["margins"][1], head_out.max(0))
    spacing = par["spacing"]
    shape = tuple(int(n) for n in np.maximum(np.ceil((high - low) / spacing), 8))

    control = tuple(max(3, int(round(n * s / ELASTIC_CONTROL_MM)) + 1) for n, s in zip(shape, spacing))
    displacement = smooth_field(rng, shape, control, components=3)
    displacement *= par["elastic_max_mm"] / np.sqrt((displacement ** 2).sum(0)).max()
    bias = smooth_field(rng, shape, (BIAS_CONTROL,) * 3)[0]
    bias = np.exp(bias / np.abs(bias).max() * np.log1p(par["bias"]))

    sigma = np.maximum(0.0, (spacing.min() / src.spacing - 1) / 2)
    blurred = ndi.gaussian_filter(src.image, sigma) if sigma.max() > 0 else src.image
    axis = par["thick_axis"]
    subsamples = 1 if axis is None else int(np.ceil(spacing[axis] / src.spacing[axis]))
    offsets = ((np.arange(subsamples) + 0.5) / subsamples - 0.5) * (0 if axis is None else spacing[axis])
    grid = [low[a] + spacing[a] * np.arange(shape[a]) for a in range(3)]
    image = np.zeros(shape, np.float32)
    brain = np.zeros(shape, np.float32)
    for offset in offsets:
        p = [g.copy() for g in grid]
        if axis is not None:
            p[axis] = p[axis] + offset
        p = np.broadcast_arrays(p[0][:, None, None], p[1][None, :, None], p[2][None, None, :])
        q = np.stack([src.centre[i] + sum(inverse[i, j] * (p[j] - shift[j]) for j in range(3))
                      + displacement[i] for i in range(3)])
        q /= src.spacing[:, None, None, None]
        image += ndi.map_coordinates(blurred, q, order=1, mode="constant", cval=0.0)
        brain += ndi.map_coordinates(src.brain, q, order=1, mode="constant", cval=0.0)
    image /= subsamples
    brain /= subsamples

    signal = np.clip(image, 0, None) ** par["gamma"] * par["scanner_scale"] * bias
    sigma_noise = par["noise"] * par["scanner_scale"]
    noisy = np.hypot(signal + rng.normal(0, sigma_noise, shape), rng.normal(0, sigma_noise, shape))
    image_out = np.clip(np.round(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)
    label_out = (brain > 0.5).astype(np.uint8)

    origin = src.origin + src.direction @ low[::-1]  # voxel o sits at low + o × spacing (mm, z y x)
    images = []
    for array in (image_out, label_out):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        img.SetOrigin(tuple(float(o) for o in origin))
        img.SetDirection(tuple(float(d) for d in src.direction.ravel()))
        images.append(img)
    record = {"shape_zyx": list(shape), "spacing_zyx": [round(float(s), 3) for s in spacing],
              "thick_axis": None if axis is None else AXIS_NAMES[axis],
              "rotation_deg": round(float(np.rad2deg(np.arccos(np.clip((np.trace(par["rotation"]) - 1) / 2,
                                                                             -1, 1)))), 2),
              "scale_zyx": [round(float(s), 3) for s in par["scale"]],
              "translation_mm_zyx": [round(float(t), 2) for t in par["translation"]],
              "elastic_max_mm": round(float(par["elastic_max_mm"]), 2), "gamma": round(par["gamma"], 3),
              "scanner_scale": round(float(par["scanner_scale"]), 1), "bias": round(float(par["bias"]), 3),
              "noise_sigma": round(float(sigma_noise), 2),
              "brain_ml": round(float(label_out.sum() * np.prod(spacing)) / 1000, 1)}
    return images[0], images[1], record


def dataset_json(args, record: dict, n_test: int) -> dict:
    return {"channel_names": {"0": "T1"}, "labels": dict(LABELS), "numTraining": args.cases,
            "file_ending": ".nii.gz", "name": f"Dataset{args.dataset_id:03d}_{NAME}",
            "description": "Brain extraction on warped variations of the Colin27 T1 (ch2.nii.gz) with its BET "
                           "brain mask (ch2bet.nii.gz > 0), from Debian's mricron-data package: affine, elastic, "
                           "anisotropic resampling, field of view, gamma, bias field, Rician noise.",
            "reference": "Holmes et al., J Comput Assist Tomogr 22(2):324-333, 1998 (Colin27); templates as "
                         f"shipped by MRIcron (Debian package {record.get('package', PACKAGE)})",
            "licence": "see /usr/share/doc/mricron-data/copyright (MRIcron: BSD-3-clause)",
            "nnkd_colin27": {"seed": args.seed, "test_cases": n_test, "source": record}}


def write_dataset(args, src: Colin27, raw_root: Path, record: dict) -> Path:
    folder = f"Dataset{args.dataset_id:03d}_{NAME}"
    target = raw_root / folder
    with staged_raw_dataset(raw_root, args.dataset_id, folder, args.overwrite) as staging:
        jobs = [("Tr", i) for i in range(args.cases)] + [("Ts", i) for i in range(args.test_cases)]
        cases = {}
        for split, i in tqdm(jobs, desc=f"Writing {folder}", unit="case"):
            rng = np.random.default_rng([args.seed, 0 if split == "Tr" else 1, i])
            image, label, params = make_case(src, rng)
            case = f"colin27_{i:03d}" if split == "Tr" else f"colin27_test_{i:03d}"
            sitk.WriteImage(image, str(staging / f"images{split}" / f"{case}_0000.nii.gz"), useCompression=True)
            sitk.WriteImage(label, str(staging / f"labels{split}" / f"{case}.nii.gz"), useCompression=True)
            cases[case] = params
        (staging / "dataset.json").write_text(json.dumps(dataset_json(args, record, args.test_cases), indent=4)
                                              + "\n")
        (staging / "colin27_cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    return target


# -------------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset ID, e.g. 995")
    parser.add_argument("--cases", type=int, default=20, help="training cases (default 20)")
    parser.add_argument("--test-cases", type=int, default=4, help="held-out cases in imagesTs/labelsTs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deb", type=Path, help=f"a {PACKAGE}_*.deb to use instead of apt-get download")
    parser.add_argument("--cache", type=Path,
                        help=f"where the two source files are kept (default $nnUNet_raw/../nnkd_sources/{PACKAGE})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that ID and name")
    args = parser.parse_args()
    try:
        if not 0 < args.dataset_id < 1000:
            raise NnkdError(f"dataset ID {args.dataset_id} is out of range", "use 1-999 as nnU-Net does")
        if args.cases < 2 or args.test_cases < 0:
            raise NnkdError("--cases must be at least 2 and --test-cases at least 0", "nnU-Net needs 2+ cases")
        if not os.environ.get("nnUNet_raw"):
            raise NnkdError("nnUNet_raw is not set", "export nnUNet_raw as for nnU-Net")
        raw_root = Path(os.environ["nnUNet_raw"]).expanduser().resolve()
        cache = (args.cache or raw_root.parent / "nnkd_sources" / PACKAGE).expanduser().resolve()
        started = time.time()
        paths, record = fetch_sources(cache, args.deb.expanduser().resolve() if args.deb else None)
        src = load_colin27(paths)
        print(f"Colin27: {'×'.join(map(str, src.image.shape))} (z y x) at {src.spacing.tolist()} mm, "
              f"brain {src.brain.sum() * np.prod(src.spacing) / 1000:.0f} ml")
        target = write_dataset(args, src, raw_root, record)
        cases = json.loads((target / "colin27_cases.json").read_text())
        shapes = np.array([c["shape_zyx"] for c in cases.values()])
        print(f"wrote {target} in {time.time() - started:.0f} s: {args.cases} training + {args.test_cases} test "
              f"cases, shapes (z y x) from {shapes.min(0).tolist()} to {shapes.max(0).tolist()}")
    except NnkdError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
