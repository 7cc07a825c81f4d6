"""The `multiorgan` preset of the synthetic generator: an abdomen-like task with a capacity gap.

Eleven labelled structures whose sizes span about three orders of magnitude (liver ≈ 1/4 of the body,
adrenal glands a few voxels), a thin branching vessel tree, left/right pairs that only position tells apart
(kidneys, adrenal glands: same intensity, mirrored places), neighbours with overlapping intensities (liver
and spleen; pancreas and the unlabelled bowel loops), a bright unlabelled spine, and shapes that vary
between cases (each organ is moved, scaled and turned, and the whole abdomen is warped by a smooth random
field). Geometry is drawn in body coordinates (−1…1 across the body) and lives in 3D; a 2D case is the
central axial slice of the same anatomy.
"""

from typing import NamedTuple

import numpy as np

# Labelled structures in painting order (later ones are drawn over earlier ones); the label value is the
# position in this tuple + 1 (background is 0).
STRUCTURES = ("liver", "spleen", "stomach", "pancreas", "kidney_left", "kidney_right", "gallbladder",
              "adrenal_left", "adrenal_right", "liver_lesion", "vessels")
LABELS = {"background": 0, **{name: i for i, name in enumerate(STRUCTURES, start=1)}}
# Unlabelled tissue indices after the labelled ones.
BODY, BOWEL, SPINE = len(STRUCTURES) + 1, len(STRUCTURES) + 2, len(STRUCTURES) + 3
DEFAULT_SHAPE = {3: (40, 128, 128), 2: (192, 192)}
SPACING = {3: (2.5, 1.0, 1.0), 2: (999.0, 1.0, 1.0)}  # z, y, x in mm
VESSEL_RADIUS_MM = 1.0
AORTA_RADIUS = 0.055  # in body coordinates

# Intensity of each tissue index (0 air, then STRUCTURES, then body fat, bowel, spine) in channel 0.
# Liver and spleen overlap, pancreas and bowel overlap, the pairs are identical.
CONTRAST = np.array([0.0, 0.78, 0.74, 0.42, 0.62, 0.95, 0.95, 0.22, 0.68, 0.68, 0.52, 1.30, 0.30, 0.60, 1.70])


class Organ(NamedTuple):
    centre: tuple[float, float, float]  # z, y, x in body coordinates; y > 0 is posterior, x < 0 the patient's right
    axes: tuple[float, float, float]  # semi-axes in body coordinates
    angle: float = 0.0  # in-plane rotation in degrees


# The mean anatomy. Pairs mirror each other in x.
ANATOMY = {
    "liver": Organ((0.0, -0.05, -0.42), (0.55, 0.45, 0.40), 10),
    "spleen": Organ((0.1, 0.22, 0.58), (0.35, 0.22, 0.14), -30),
    "stomach": Organ((0.1, -0.28, 0.32), (0.35, 0.17, 0.22), 20),
    "pancreas": Organ((-0.05, 0.08, 0.12), (0.18, 0.055, 0.30), -15),
    "kidney_left": Organ((-0.2, 0.42, 0.38), (0.3, 0.13, 0.09), -20),
    "kidney_right": Organ((-0.2, 0.42, -0.38), (0.3, 0.13, 0.09), 20),
    "gallbladder": Organ((-0.1, -0.32, -0.22), (0.15, 0.09, 0.06), 30),
    "adrenal_left": Organ((0.15, 0.26, 0.24), (0.08, 0.045, 0.022), 40),
    "adrenal_right": Organ((0.15, 0.26, -0.24), (0.08, 0.045, 0.022), -40),
    "spine": Organ((0.0, 0.62, 0.0), (1.5, 0.12, 0.11), 0),
}
BOWEL_LOOPS = 5


def _rotation(angle_degrees: float) -> np.ndarray:
    a = np.deg2rad(angle_degrees)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _inside(u: np.ndarray, centre, axes, angle: float) -> np.ndarray:
    local = np.tensordot(_rotation(angle).T, u - np.asarray(centre)[:, None, None, None], axes=1)
    return np.sum((local / np.asarray(axes)[:, None, None, None]) ** 2, axis=0) <= 1.0


def _warp(rng: np.random.Generator, u: np.ndarray, flat: bool) -> np.ndarray:
    """Body coordinates displaced by a smooth random field (three low-frequency waves per axis)."""
    warped = u.copy()
    for axis in range(0 if not flat else 1, 3):
        for _ in range(3):
            k = rng.normal(0, 1.6, size=3) * (np.array([0.0, 1, 1]) if flat else 1)
            warped[axis] += rng.uniform(0.01, 0.035) * np.sin(np.tensordot(k, u, axes=1) + rng.uniform(0, 2 * np.pi))
    return warped


def _varied(rng: np.random.Generator, organ: Organ, flat: bool) -> Organ:
    """One case's version of an organ: moved, scaled and turned a little (a 2D case cuts every organ at its
    centre)."""
    shift = rng.uniform(-0.04, 0.04, size=3)
    scale = rng.uniform(0.8, 1.2, size=3)
    centre = np.asarray(organ.centre) + shift
    if flat:
        centre[0] = 0.0
    return Organ(tuple(centre), tuple(np.asarray(organ.axes) * scale),
                 organ.angle + rng.uniform(-15, 15))


def _vessel_tree(rng: np.random.Generator, flat: bool) -> list[np.ndarray]:
    """Centre lines (dense points in body coordinates) of a branching tree leaving the aorta: a trunk running
    anterior, splitting into two to three curved branches."""
    start = np.array([0.0, 0.38, 0.03])
    trunk_end = start + np.array([0.0, -rng.uniform(0.3, 0.4), rng.uniform(-0.05, 0.1)])
    lines = [np.linspace(start, trunk_end, 200)]
    for _ in range(rng.integers(2, 4)):
        angle = rng.uniform(-np.pi * 0.9, -np.pi * 0.1)  # towards the front, left or right
        length = rng.uniform(0.25, 0.45)
        bend = rng.uniform(-0.15, 0.15)
        t = np.linspace(0, 1, 300)[:, None]
        direction = np.array([0.0, np.sin(angle), np.cos(angle)])
        across = np.array([0.0, -direction[2], direction[1]])
        z = 0.0 if flat else rng.uniform(-0.3, 0.3)
        lines.append(trunk_end + t * length * direction + np.sin(np.pi * t) * bend * across
                     + t * np.array([z, 0, 0]))
    return lines


def make_tissue(rng: np.random.Generator, coords: np.ndarray, extent: np.ndarray, flat: bool,
                vessel_mask) -> tuple[np.ndarray, np.ndarray]:
    """Tissue indices (0 air, 1… STRUCTURES, then BODY, BOWEL, SPINE) and the body mask of one case.
    coords: (3, Z, Y, X) in mm centred on the volume; `vessel_mask(points_mm)` turns centre lines (mm) into
    voxels within VESSEL_RADIUS_MM."""
    half = (extent / 2)[:, None, None, None]
    u = coords / half
    body = _inside(u, (0, 0.05, 0), (4.0, 0.78, 0.95), 0)
    w = _warp(rng, u, flat)
    tissue = np.where(body, BODY, 0).astype(np.int64)

    for i in range(BOWEL_LOOPS):  # unlabelled loops in the anterior abdomen, pancreas-like intensity
        centre = (rng.uniform(-0.3, 0.3) * (not flat), rng.uniform(-0.45, -0.05), rng.uniform(-0.25, 0.45))
        axes = (rng.uniform(0.15, 0.3), rng.uniform(0.05, 0.1), rng.uniform(0.06, 0.12))
        tissue[_inside(w, centre, axes, rng.uniform(0, 180)) & body] = BOWEL
    tissue[_inside(w, *_varied(rng, ANATOMY["spine"], flat)) & body] = SPINE
    liver = None
    for name in STRUCTURES:
        if name in ANATOMY:
            organ = _varied(rng, ANATOMY[name], flat)
            mask = _inside(w, *organ) & body
            if name == "liver":
                liver = organ
        elif name == "liver_lesion":  # a small nodule inside the liver, darker than it
            offset = rng.uniform(-0.45, 0.45, size=3) * np.asarray(liver.axes) * (np.array([0.0, 1, 1]) if flat else 1)
            axes = rng.uniform(0.04, 0.07, size=3) * np.array([2.0, 1, 1])
            mask = _inside(w, np.asarray(liver.centre) + offset, axes, 0) & (tissue == LABELS["liver"])
        else:  # vessels: the aorta along z and a branching tree in the plane
            aorta = _inside(u, (0, 0.38, 0.03), (4.0, AORTA_RADIUS, AORTA_RADIUS), 0)
            points = [line * extent / 2 for line in _vessel_tree(rng, flat)]
            mask = (aorta | vessel_mask(np.concatenate(points))) & body
        tissue[mask] = LABELS[name]
    return tissue, body


def contrast(channel: int) -> np.ndarray:
    """Tissue intensities of one channel; further channels are deterministic variations of the first."""
    if channel == 0:
        return CONTRAST
    return CONTRAST * np.random.default_rng([104729, channel]).uniform(0.8, 1.2, size=CONTRAST.shape)
