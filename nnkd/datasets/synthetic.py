"""A synthetic nnU-Net raw dataset for demos, tests and quick benchmarks.

Each case is a body with an "organ" (ellipsoid) holding a nested "lesion" whose intensity matches the
background (so only context tells it apart), an unlabelled neighbour that touches the organ with a
similar intensity (only shape tells the boundary), and a thin meandering "vessel". Bias field, texture
and noise make intensities unreliable on their own. Geometry is drawn in millimetres on an anisotropic
grid, so nnU-Net plans it like a real scan.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt, gaussian_filter
from tqdm import tqdm

from nnkd import __version__
from nnkd.datasets import multiorgan
from nnkd.datasets.raw import staged_raw_dataset
from nnkd.errors import NnkdError

LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
NEIGHBOUR = 4  # tissue index of the unlabelled touching structure
DEFAULT_SHAPE = {3: (48, 64, 64), 2: (128, 128)}
SPACING = {3: (2.0, 0.8, 0.8), 2: (999.0, 0.8, 0.8)}  # z, y, x in mm; 2D cases are single-slice NIfTI
CHANNEL_NAMES = ("T1", "T2", "PD")
# Intensity of background, organ, lesion, vessel, neighbour for the first three channels.
CONTRASTS = np.array([
    (0.25, 1.00, 0.30, 1.40, 0.85),
    (0.60, 0.45, 1.20, 0.30, 0.50),
    (0.35, 0.80, 0.55, 1.10, 0.95),
])
VESSEL_RADIUS_MM = 1.2
CASE_SIZE_JITTER = 0.15
# The generator's presets: the default task (organ, lesion, vessel) and `multiorgan` (nnkd.datasets.multiorgan:
# eleven structures over three orders of magnitude in size, for accuracy-size studies with a capacity gap).
PRESET_LABELS = {"default": LABELS, "multiorgan": multiorgan.LABELS}
PRESET_SHAPE = {"default": DEFAULT_SHAPE, "multiorgan": multiorgan.DEFAULT_SHAPE}
PRESET_SPACING = {"default": SPACING, "multiorgan": multiorgan.SPACING}
PRESET_DESCRIPTION = {
    "default": "organ with a nested lesion, a touching unlabelled neighbour and a thin vessel",
    "multiorgan": "an abdomen-like body with eleven structures from liver to adrenal glands, a branching vessel "
                  "tree, left/right pairs, overlapping intensities and an unlabelled spine and bowel",
}


@dataclass(frozen=True)
class SyntheticSpec:
    dataset_id: int
    cases: int = 12
    channels: int = 1
    dim: int = 3
    shape: tuple[int, ...] | None = None
    seed: int = 0
    name: str = "Synthetic"
    test_cases: int | None = None
    labels: tuple[str, ...] | None = None  # structures to label (others stay in the image, as background); None: all
    preset: str = "default"  # the anatomy: a key of PRESET_LABELS
    base_shape: tuple[int, int, int] = field(init=False)
    spacing: tuple[float, float, float] = field(init=False)

    def __post_init__(self):
        if not 0 < self.dataset_id < 1000:
            raise NnkdError(f"dataset ID {self.dataset_id} is out of range", "use 1-999 as nnU-Net does")
        if self.preset not in PRESET_LABELS:
            raise NnkdError(f"--preset {self.preset} is unknown", f"use one of {', '.join(PRESET_LABELS)}")
        if self.dim not in (2, 3):
            raise NnkdError(f"--dim {self.dim} is not supported", "use --dim 3 or --dim 2")
        if self.cases < 2:
            raise NnkdError(f"--cases {self.cases} is too few", "nnU-Net needs at least 2 training cases")
        if self.channels < 1:
            raise NnkdError(f"--channels {self.channels} is invalid", "use 1 or more channels")
        if not self.name.replace("-", "").replace("_", "").isalnum() or "__" in self.name:
            raise NnkdError(f"dataset name '{self.name}' is invalid", "use letters, digits and single '-' or '_'")
        shape = tuple(self.shape) if self.shape else PRESET_SHAPE[self.preset][self.dim]
        if len(shape) != self.dim:
            raise NnkdError(f"--shape has {len(shape)} values for a {self.dim}D dataset",
                            "give Z Y X for --dim 3 or Y X for --dim 2")
        if min(shape) < 16:
            raise NnkdError(f"--shape {' '.join(map(str, shape))} is too small", "use at least 16 voxels per axis")
        structures = [name for name in self.all_labels if name != "background"]
        if self.labels is not None:
            unknown = [name for name in self.labels if name not in structures]
            if unknown or not self.labels or len(set(self.labels)) != len(self.labels):
                raise NnkdError(f"--labels {' '.join(self.labels)} is not a set of structures",
                                f"name each structure once, from {', '.join(structures)}")
        object.__setattr__(self, "base_shape", (1, *shape) if self.dim == 2 else shape)
        object.__setattr__(self, "spacing", PRESET_SPACING[self.preset][self.dim])

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def n_test_cases(self) -> int:
        return self.test_cases if self.test_cases is not None else max(2, self.cases // 4)

    @property
    def all_labels(self) -> dict[str, int]:
        """Every structure of the preset with its tissue index (background 0)."""
        return PRESET_LABELS[self.preset]

    @property
    def dataset_labels(self) -> dict[str, int]:
        """dataset.json's labels: the chosen structures numbered 1, 2, … in the preset's order."""
        kept = [name for name in self.all_labels
                if name != "background" and (self.labels is None or name in self.labels)]
        return {"background": 0, **{name: i for i, name in enumerate(kept, start=1)}}


def channel_contrast(channel: int) -> np.ndarray:
    """Tissue intensities of one channel; channels past the table get a deterministic variation."""
    if channel < len(CONTRASTS):
        return CONTRASTS[channel]
    rng = np.random.default_rng([7919, channel])
    return CONTRASTS[channel % len(CONTRASTS)] * rng.uniform(0.8, 1.2, size=CONTRASTS.shape[1])


def _rotation_about_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _inside_ellipsoid(coords: np.ndarray, centre, semi_axes, rotation: np.ndarray) -> np.ndarray:
    """coords: (3, Z, Y, X) in mm. True where the point lies inside the rotated ellipsoid."""
    local = np.tensordot(rotation.T, coords - np.asarray(centre)[:, None, None, None], axes=1)
    return np.sum((local / np.asarray(semi_axes)[:, None, None, None]) ** 2, axis=0) <= 1.0


def _vessel_mask(shape, spacing, coords_origin, points: np.ndarray, radius: float = VESSEL_RADIUS_MM) -> np.ndarray:
    """Voxels within `radius` mm of a centre line given as dense points in mm."""
    index = np.round((points - coords_origin) / np.asarray(spacing)).astype(int)
    keep = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
    centre_line = np.ones(shape, dtype=bool)
    centre_line[tuple(index[keep].T)] = False
    if centre_line.all():
        return np.zeros(shape, dtype=bool)
    return distance_transform_edt(centre_line, sampling=spacing) <= radius


class _Grid:
    """One case's voxel grid: its shape (jittered around the spec's), spacing, extent and mm coordinates."""

    def __init__(self, rng: np.random.Generator, spec: SyntheticSpec):
        self.flat = spec.dim == 2
        jitter = rng.uniform(1 - CASE_SIZE_JITTER, 1 + CASE_SIZE_JITTER, size=3)
        self.shape = tuple(1 if (self.flat and a == 0) else max(16, int(round(s * j)))
                           for a, (s, j) in enumerate(zip(spec.base_shape, jitter)))
        self.spacing = np.asarray(spec.spacing)
        self.extent = np.asarray(self.shape) * self.spacing
        axes = [(np.arange(n) - (n - 1) / 2) * sp for n, sp in zip(self.shape, self.spacing)]
        self.coords = np.stack(np.meshgrid(*axes, indexing="ij"))
        self.origin = np.array([a[0] for a in axes])

    def vessel_mask(self, points: np.ndarray, radius: float = VESSEL_RADIUS_MM) -> np.ndarray:
        return _vessel_mask(self.shape, self.spacing, self.origin, points, radius)


def _default_tissue(rng: np.random.Generator, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """The default preset's tissue indices (LABELS, then NEIGHBOUR) and body mask."""
    flat, shape, extent, coords = grid.flat, grid.shape, grid.extent, grid.coords
    in_plane = np.array([0.0, 1.0, 1.0]) if flat else np.ones(3)

    rotation = _rotation_about_z(rng.uniform(0, np.pi))
    organ_centre = rng.uniform(-0.1, 0.1, size=3) * extent * in_plane
    organ_axes = rng.uniform(0.2, 0.28, size=3) * extent
    if flat:
        organ_axes[0] = 1.0
    organ = _inside_ellipsoid(coords, organ_centre, organ_axes, rotation)

    lesion_offset = rng.uniform(-0.3, 0.3, size=3) * organ_axes * in_plane
    lesion_axes = rng.uniform(0.3, 0.45, size=3) * organ_axes
    if flat:
        lesion_axes[0] = 1.0
    lesion = _inside_ellipsoid(coords, organ_centre + rotation @ lesion_offset, lesion_axes, rotation)

    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([0.0, np.sin(angle), np.cos(angle)])
    reach = 1.0 / np.sqrt(np.sum((rotation.T @ direction / organ_axes) ** 2))  # organ radius along direction
    neighbour_axes = rng.uniform(0.45, 0.6) * organ_axes
    neighbour_reach = 1.0 / np.sqrt(np.sum((rotation.T @ direction / neighbour_axes) ** 2))
    neighbour_centre = organ_centre + direction * 0.95 * (reach + neighbour_reach)
    neighbour = _inside_ellipsoid(coords, neighbour_centre, neighbour_axes, rotation) & ~organ

    t = np.linspace(-1, 1, 4 * int(max(shape)))[:, None]
    along = np.array([0.0, np.cos(angle + 1.3), -np.sin(angle + 1.3)])
    across = np.array([0.0, -along[2], along[1]])
    tilt = np.array([0.0 if flat else rng.uniform(-0.3, 0.3) * extent[0], 0, 0])
    wiggle = rng.uniform(0.1, 0.2) * extent[1] * np.sin(np.pi * (rng.uniform(1, 2) * t + rng.uniform(0, 2)))
    points = organ_centre + t * (0.6 * extent * along + tilt) + wiggle * across
    vessel = grid.vessel_mask(points)

    tissue = np.zeros(shape, dtype=np.int64)
    tissue[organ] = LABELS["organ"]
    tissue[lesion & organ] = LABELS["lesion"]
    tissue[vessel] = LABELS["vessel"]
    tissue[neighbour & (tissue == 0)] = NEIGHBOUR
    body = _inside_ellipsoid(coords, np.zeros(3), extent * np.array([0.49 if not flat else 1, 0.47, 0.47]),
                             np.eye(3)) | (tissue > 0)
    return tissue, body


def _render(rng: np.random.Generator, grid: _Grid, tissue: np.ndarray, body: np.ndarray, channels: int,
            contrast) -> list[np.ndarray]:
    """The channel images of a tissue map: each tissue's intensity (`contrast(c)[tissue]`) under a smooth
    bias field, with texture and noise."""
    unit = grid.coords / (grid.extent[:, None, None, None] / 2)
    images = []
    for c in range(channels):
        coeffs = rng.normal(0, 0.12, size=6)
        bias = np.exp(coeffs[0] * unit[0] + coeffs[1] * unit[1] + coeffs[2] * unit[2]
                      + coeffs[3] * unit[1] * unit[2] + coeffs[4] * unit[1] ** 2 + coeffs[5] * unit[2] ** 2)
        texture = gaussian_filter(rng.normal(size=grid.shape), sigma=(0 if grid.flat else 1.0, 1.5, 1.5)) * 0.6
        intensity = contrast(c)[tissue] * body * bias
        image = intensity + 0.08 * texture * body + rng.normal(0, 0.05, size=grid.shape)
        images.append((1000.0 * image).astype(np.float32))
    return images


def make_case(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """One case: a list of float32 channel images (Z, Y, X) and its uint8 label map (of the chosen labels; the
    images do not depend on which structures are labelled)."""
    grid = _Grid(rng, spec)
    if spec.preset == "multiorgan":
        tissue, body = multiorgan.make_tissue(
            rng, grid.coords, grid.extent, grid.flat,
            lambda points: grid.vessel_mask(points, multiorgan.VESSEL_RADIUS_MM))
        contrast = multiorgan.contrast
    else:
        tissue, body = _default_tissue(rng, grid)
        contrast = channel_contrast
    kept = spec.dataset_labels  # tissue index → label; unlabelled structures and tissues → background
    relabel = np.zeros(int(tissue.max()) + 1, dtype=np.uint8)
    for name, index in spec.all_labels.items():
        if index <= tissue.max():
            relabel[index] = kept.get(name, 0)
    return _render(rng, grid, tissue, body, spec.channels, contrast), relabel[tissue]


def _write_nifti(array: np.ndarray, spacing, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(image, str(path), useCompression=True)


def dataset_json(spec: SyntheticSpec) -> dict:
    names = [CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"MR{c}" for c in range(spec.channels)]
    return {
        "channel_names": {str(c): n for c, n in enumerate(names)},
        "labels": spec.dataset_labels,
        "numTraining": spec.cases,
        "file_ending": ".nii.gz",
        "name": spec.folder_name,
        "description": f"Synthetic scans from nnkd_make_synthetic: {PRESET_DESCRIPTION[spec.preset]}; bias field, "
                       "texture and noise.",
        "reference": f"nnkd {__version__}",
        "licence": "CC0",
        "nnkd_synthetic": {"preset": spec.preset, "seed": spec.seed, "dim": spec.dim, "shape": list(spec.base_shape),
                           "spacing": list(spec.spacing), "channels": spec.channels,
                           "test_cases": spec.n_test_cases},
    }


def write_synthetic_dataset(spec: SyntheticSpec, raw_root: Path, overwrite: bool = False) -> Path:
    """Write the dataset to raw_root/DatasetXXX_Name; the folder appears complete or not at all."""
    target = Path(raw_root) / spec.folder_name
    with staged_raw_dataset(raw_root, spec.dataset_id, spec.folder_name, overwrite) as staging:
        jobs = [("Tr", i) for i in range(spec.cases)] + [("Ts", i) for i in range(spec.n_test_cases)]
        for split, i in tqdm(jobs, desc=f"Writing {spec.folder_name}", unit="case"):
            rng = np.random.default_rng([spec.seed, 0 if split == "Tr" else 1, i])
            images, label = make_case(rng, spec)
            case = f"case_{i:03d}" if split == "Tr" else f"test_{i:03d}"
            for c, image in enumerate(images):
                _write_nifti(image, spec.spacing, staging / f"images{split}" / f"{case}_{c:04d}.nii.gz")
            _write_nifti(label, spec.spacing, staging / f"labels{split}" / f"{case}.nii.gz")
        (staging / "dataset.json").write_text(json.dumps(dataset_json(spec), indent=4) + "\n")
    return target
