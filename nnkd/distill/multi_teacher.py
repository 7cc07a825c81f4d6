"""Multi-teacher distillation: per-teacher adaptors, teacher feature standardisation and loss balancing.

Teachers trained for different things differ by orders of magnitude in feature scale; standardising each
teacher's features (statistics of the first batches, kept in the checkpoint) and balancing the per-teacher
losses keep one teacher from drowning out the others.
"""

import math

import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from torch import nn

from nnkd.errors import NnkdError

STANDARDIZATIONS = ("phi-s", "channel", "none")
BALANCE_MODES = ("fixed", "uncertainty", "learned")


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


def _channels_last_rows(features: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) → (N·∏spatial, C)."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


class FeatureStandardizer(nn.Module):
    """Maps one teacher's features to zero mean and unit variance per output channel.

    'phi-s' (PHI-S): rotate the centred features onto their principal axes, then by a normalised Hadamard
    matrix, and divide by one scale: every output channel ends with the same variance (the mean
    eigenvalue, then 1), so no single direction of large variance dominates the distance. Hadamard
    matrices exist for powers of two, so the channels are zero-padded to the next one (768 → 1024).
    'channel': per-channel z-score. 'none': identity. The statistics are accumulated over the first
    batches (`accumulate`), then frozen by `fit`; they are buffers, so checkpoints keep them.
    """

    def __init__(self, channels: int, mode: str = "phi-s"):
        super().__init__()
        if mode not in STANDARDIZATIONS:
            raise ValueError(f"standardization '{mode}' is unknown (use {', '.join(STANDARDIZATIONS)})")
        self.mode = mode
        self.in_channels = channels
        self.out_channels = _next_power_of_two(channels) if mode == "phi-s" else channels
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("projection", torch.eye(self.out_channels, channels))
        self.register_buffer("fitted", torch.tensor(1.0 if mode == "none" else 0.0))
        self.register_buffer("rows", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("sum", torch.zeros(channels, dtype=torch.float64), persistent=False)
        self.register_buffer("outer", torch.zeros(channels, channels, dtype=torch.float64), persistent=False)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    @torch.no_grad()
    def accumulate(self, features: torch.Tensor, max_rows: int = 65536) -> None:
        """Add a batch of teacher features (N, C, *spatial) to the statistics, at most `max_rows` positions
        (an evenly spaced subset)."""
        rows = _channels_last_rows(features.detach()).double()
        if rows.shape[0] > max_rows:
            rows = rows[torch.linspace(0, rows.shape[0] - 1, max_rows, device=rows.device).long()]
        self.rows += rows.shape[0]
        self.sum += rows.sum(0)
        self.outer += rows.T @ rows

    def accumulators(self) -> list[torch.Tensor]:
        """The running sums, for an all-reduce across DDP ranks before `fit`."""
        return [self.rows, self.sum, self.outer]

    @torch.no_grad()
    def fit(self) -> None:
        if self.mode == "none":
            return
        if self.rows.item() < 2:
            raise ValueError("no teacher features were accumulated before fit()")
        mean = self.sum / self.rows
        covariance = self.outer / self.rows - torch.outer(mean, mean)
        if self.mode == "channel":
            std = covariance.diagonal().clamp_min(1e-12).sqrt()
            projection = torch.diag(1 / std)
        else:
            eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
            mean_eigenvalue = eigenvalues.clamp_min(0).sum() / self.out_channels
            rotation = torch.from_numpy(hadamard(self.out_channels)).to(covariance) / math.sqrt(self.out_channels)
            projection = rotation[:, :self.in_channels] @ eigenvectors.T / mean_eigenvalue.clamp_min(1e-12).sqrt()
        self.mean.copy_(mean.float())
        self.projection.copy_(projection.float())
        self.fitted.fill_(1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features.float().movedim(1, -1) - self.mean
        return (centred @ self.projection.T).movedim(-1, 1)


def stage_index(stage: int, stages: int, teacher: str) -> int:
    """A teacher's feature stage from `teacher_stages` (negative counts from the end), checked."""
    if not -stages <= stage < stages:
        raise NnkdError(f"teacher_stages: {teacher} has {stages} stage(s), not {stage}",
                        "nnkd_teachers describe SPEC lists a teacher's stages")
    return stage % stages


def fit_standardizers(standardizers: list[FeatureStandardizer], batches, stages: list[int],
                      all_reduce=None) -> None:
    """Fit each teacher's standardiser on its chosen stage's features over `batches` (an iterable of per-teacher
    output lists, consumed one batch at a time); all_reduce (DDP) sums the statistics across processes first."""
    for outputs in batches:
        for standardizer, output, stage in zip(standardizers, outputs, stages):
            standardizer.accumulate(output.features[stage])
    for standardizer in standardizers:
        for tensor in standardizer.accumulators() if all_reduce else ():
            all_reduce(tensor)
        standardizer.fit()


class TeacherAdaptor(nn.Module):
    """AM-RADIO-style adaptor head: a two-layer 1×1-conv MLP from a student stage to one teacher's
    (standardised) channels. Training only; it is not part of the exported student."""

    def __init__(self, student_channels: int, teacher_channels: int, spatial_dims: int):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.layers = nn.Sequential(conv(student_channels, teacher_channels, 1), nn.GELU(),
                                    conv(teacher_channels, teacher_channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def adaptor_loss(predicted: torch.Tensor, target: torch.Tensor, cosine_weight: float = 1.0,
                 smooth_l1_weight: float = 1.0) -> torch.Tensor:
    """Cosine distance over channels (direction) plus smooth-L1 (magnitude), in float32."""
    predicted, target = predicted.float(), target.float()
    cosine = (1 - F.cosine_similarity(predicted, target, dim=1, eps=1e-6)).mean()
    return cosine_weight * cosine + smooth_l1_weight * F.smooth_l1_loss(predicted, target)


class LossBalancer(nn.Module):
    """Combines the per-teacher losses L_k into one term.

    fixed: Σ w_k L_k with the given weights.
    uncertainty (Kendall et al.): Σ exp(−s_k) L_k + s_k with learned s_k = log σ_k²; the weight exp(−s_k)
    tends to 1 / L_k, so a teacher the student cannot follow weighs less.
    learned: weights K·softmax(θ) with learned θ, trained on Σ p_k L_k − τ·H(p) (τ = `temperature`); the
    entropy term keeps the weights from collapsing onto one teacher, and they tend to K·softmax(−L_k / τ).
    The student's gradient always sees Σ w_k L_k with the current weights, and that is the value returned.
    """

    def __init__(self, count: int, mode: str = "fixed", weights=None, temperature: float = 1.0):
        super().__init__()
        if mode not in BALANCE_MODES:
            raise ValueError(f"balance '{mode}' is unknown (use {', '.join(BALANCE_MODES)})")
        self.mode, self.count, self.temperature = mode, count, temperature
        if mode == "fixed":
            weights = [1.0] * count if weights is None else [float(w) for w in weights]
            if len(weights) != count:
                raise ValueError(f"{len(weights)} fixed weight(s) for {count} teacher(s)")
            self.register_buffer("fixed_weights", torch.tensor(weights))
        elif mode == "uncertainty":
            self.log_variance = nn.Parameter(torch.zeros(count))
        else:
            self.scores = nn.Parameter(torch.zeros(count))

    def weights(self) -> torch.Tensor:
        """The current weight of each teacher's loss."""
        if self.mode == "fixed":
            return self.fixed_weights
        if self.mode == "uncertainty":
            return torch.exp(-self.log_variance)
        return self.count * torch.softmax(self.scores, 0)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.float()
        if self.mode == "fixed":
            return (self.fixed_weights * losses).sum()
        if self.mode == "uncertainty":
            return (torch.exp(-self.log_variance) * losses + self.log_variance).sum()
        p = torch.softmax(self.scores, 0)
        student_term = (self.count * p.detach() * losses).sum()
        weight_objective = (p * losses.detach()).sum() + self.temperature * (p * torch.log(p)).sum()
        return student_term + (weight_objective - weight_objective.detach())  # θ's gradient, no value
