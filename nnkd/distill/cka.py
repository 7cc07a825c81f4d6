"""Linear CKA (centred kernel alignment) between feature matrices, without any n×n matrix.

CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F) for X (n, p) and Y (n, q) centred over rows: invariant to
orthogonal transforms and isotropic scaling of either side, so teacher and student widths may differ
and no projector is needed.
"""

import torch
import torch.nn.functional as F

EPS = 1e-12


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CKA of (n, p) and (n, q) in float32 whatever the autocast state; 0 (not NaN) for constant features."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        y = y.float()
        x = x - x.mean(0, keepdim=True)
        y = y - y.mean(0, keepdim=True)
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
        return cross / (norm + EPS)


def feature_rows(student: torch.Tensor, teacher: torch.Tensor, max_rows: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, channels) matrices of two stage maps at the same voxel positions.

    Both maps are average-pooled to the coarser grid of the two (per axis), flattened over batch and
    space, and, above `max_rows`, a random subset of the same rows is kept in both.
    """
    size = [min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:])]
    pool = F.adaptive_avg_pool3d if student.ndim == 5 else F.adaptive_avg_pool2d
    student, teacher = pool(student, size), pool(teacher, size)
    s = student.movedim(1, -1).reshape(-1, student.shape[1])
    t = teacher.movedim(1, -1).reshape(-1, teacher.shape[1])
    if s.shape[0] > max_rows:
        keep = torch.randperm(s.shape[0], device=s.device, generator=generator)[:max_rows]
        s, t = s[keep], t[keep]
    return s, t


def cka_per_stage(pairs: list[tuple[torch.Tensor, torch.Tensor]], max_rows: int = 4096) -> torch.Tensor:
    """CKA for each (student map, teacher map) stage pair, as one tensor."""
    return torch.stack([linear_cka(*feature_rows(s, t, max_rows)) for s, t in pairs])
