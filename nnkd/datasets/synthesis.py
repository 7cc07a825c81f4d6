"""Synthetic transfer cases for TS-KD: a small diffusion model trained on the task's preprocessed images.

The model (MONAI's DiffusionModelUNet, DDPM training with v-prediction, DDIM for fast sampling) learns random
crops of the configuration's preprocessed training images, drawn by nnU-Net's own data loader as nnU-Net's
trainer draws them (a third centred on foreground), all image channels jointly: 3D crops for 3D configurations,
2D slices for 2D ones. It works in nnU-Net's normalised intensity space: each channel is clipped to the 0.5-99.5
percentiles of the training data and scaled to [-1, 1] (the range DDIM clips its estimates to), and samples are
mapped back, so synthetic cases have the intensities of preprocessed data and never leave that range.

A synthetic case is one crop-sized volume (C, Z, Y, X) at the configuration's spacing; for 2D configurations a
single-slice volume (C, 1, Y, X), as nnU-Net stores 2D data. Its segmentation is 0 everywhere and carries no
labels (see nnkd.datasets.transfer). The checkpoint is kept in the set's `nnkd/` folder: a rerun with the same
training settings reuses the model and its intensity ranges and only samples the cases still missing.
"""

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nnkd.atomic import write_bytes_atomic
from nnkd.datasets.transfer import TransferSet, named_set, unlabeled_class_locations
from nnkd.plans import PreprocessedConfiguration
from nnkd.devices import resolve_device
from nnkd.errors import NnkdError

DEFAULT_CHANNELS = (16, 32, 32)
TRAIN_TIMESTEPS = 1000
NOISE_SCHEDULE = {"schedule": "scaled_linear_beta", "beta_start": 0.0005, "beta_end": 0.0195}
PREDICTION = "v_prediction"  # cleaner samples than noise prediction after short training (seen on CPU-sized runs)
NORM_GROUPS = 8  # GroupNorm groups; every level's width must be a multiple
HEAD_CHANNELS = 8
INTENSITY_PERCENTILES = (0.5, 99.5)
INTENSITY_CASES = 16  # training cases the intensity range is measured on, at most
FOREGROUND_CROPS = 0.33  # as nnUNetTrainer.oversample_foreground_percent
CHECKPOINT = "diffusion.pt"
CHECKPOINT_FORMAT = "nnkd-diffusion-1"
GRID = "samples.png"
GRID_COLUMNS = 8
CASE_PREFIX = "synth_"


@dataclass(frozen=True)
class DiffusionSettings:
    """How the diffusion model is trained: a checkpoint is reused only by a run with the same settings."""

    size: tuple[int, ...]
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    epochs: int = 5
    steps_per_epoch: int = 20
    batch_size: int = 2
    learning_rate: float = 2e-4

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class SynthesisRequest:
    dataset: str
    count: int
    configuration: str = "3d_fullres"
    plans: str = "nnUNetPlans"
    size: tuple[int, ...] | None = None  # None: the configuration's patch size
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    epochs: int = DiffusionSettings.epochs
    steps_per_epoch: int = DiffusionSettings.steps_per_epoch
    batch_size: int = DiffusionSettings.batch_size
    inference_steps: int = 50
    device: str | None = None
    seed: int = 0
    name: str = "synthetic"
    output: Path | None = None  # an explicit transfer-set folder instead of the named set


def _check_request(request: SynthesisRequest) -> None:
    for option, value in (("-n", request.count), ("--epochs", request.epochs),
                          ("--steps-per-epoch", request.steps_per_epoch), ("--batch-size", request.batch_size),
                          ("--inference-steps", request.inference_steps)):
        if value < 1:
            raise NnkdError(f"{option} {value} is not positive", f"give {option} 1 or more")
    if len(request.channels) < 2 or any(c < 1 or c % NORM_GROUPS for c in request.channels):
        raise NnkdError(f"--channels {' '.join(map(str, request.channels))} is not a valid width list",
                        f"give 2 or more widths, each a multiple of {NORM_GROUPS} (e.g. 16 32 32)")


def _crop_size(request: SynthesisRequest, patch_size: list[int]) -> tuple[int, ...]:
    """The crop the model learns: --size, or the patch size rounded up to what the model's down-sampling divides."""
    factor = 2 ** (len(request.channels) - 1)
    if request.size is None:
        return tuple(-(-p // factor) * factor for p in patch_size)
    if len(request.size) != len(patch_size):
        raise NnkdError(f"--size has {len(request.size)} values, the configuration's patches have {len(patch_size)}",
                        f"give {len(patch_size)} values (the patch size is {' '.join(map(str, patch_size))})")
    if any(s < factor or s % factor for s in request.size):
        raise NnkdError(f"--size {' '.join(map(str, request.size))} is not divisible by {factor}",
                        f"use multiples of {factor} (the model halves the size {factor.bit_length() - 1} times)")
    return tuple(request.size)


def _output_set(request: SynthesisRequest, config: PreprocessedConfiguration) -> TransferSet:
    if request.output is None:
        return named_set(config, request.name)
    folder = Path(request.output).resolve()
    raw = os.environ.get("nnUNet_raw")
    if raw and (folder == Path(raw).resolve() or Path(raw).resolve() in folder.parents):
        raise NnkdError(f"-o {folder} is inside nnUNet_raw", "nnkd never writes to nnUNet_raw: give another folder")
    return TransferSet(folder)


def _require_monai():
    try:
        import monai  # noqa: F401
    except ImportError as e:
        raise NnkdError("nnkd_synthesize needs MONAI", "pip install 'nnkd[tskd]'") from e


def build_model(settings: DiffusionSettings, in_channels: int) -> torch.nn.Module:
    """The denoiser: one residual block per level, attention only at the lowest resolution (cheap on CPU)."""
    from monai.networks.nets import DiffusionModelUNet

    levels = len(settings.channels)
    return DiffusionModelUNet(spatial_dims=len(settings.size), in_channels=in_channels, out_channels=in_channels,
                              channels=tuple(settings.channels), attention_levels=(False,) * (levels - 1) + (True,),
                              num_res_blocks=1, norm_num_groups=NORM_GROUPS, num_head_channels=HEAD_CHANNELS)


def crop_loader(config: PreprocessedConfiguration, size: tuple[int, ...], batch_size: int):
    """nnU-Net's data loader over the configuration's preprocessed training cases, cropping `size` without
    augmentation; batches of (B, C, *size)."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    data = config.dataset_class(str(config.data_folder))
    label_manager = config.plans_manager.get_label_manager(config.dataset_json)
    return nnUNetDataLoader(data, batch_size, size, size, label_manager, oversample_foreground_percent=FOREGROUND_CROPS)


def intensity_ranges(config: PreprocessedConfiguration) -> list[list[float]]:
    """Per channel, the 0.5 and 99.5 percentiles of the preprocessed training images (up to 16 cases, at most
    10^6 voxels each): the range mapped to the model's [-1, 1]."""
    data = config.dataset_class(str(config.data_folder))
    chosen = np.unique(np.linspace(0, len(data.identifiers) - 1, INTENSITY_CASES).round().astype(int))
    values = []
    for index in chosen:
        image = np.asarray(data.load_case(data.identifiers[index])[0][:], dtype=np.float32)
        flat = image.reshape(image.shape[0], -1)
        values.append(flat[:, ::max(1, flat.shape[1] // 1_000_000)])
    low, high = np.percentile(np.concatenate(values, axis=1), INTENSITY_PERCENTILES, axis=1)
    return [[float(lo), float(max(hi, lo + 1e-3))] for lo, hi in zip(low, high)]


def _range_tensors(ranges: list[list[float]], dims: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    bounds = torch.tensor(ranges, dtype=torch.float32, device=device).view(1, len(ranges), 2, *([1] * dims))
    return bounds[:, :, 0], bounds[:, :, 1]


def to_model_range(images: torch.Tensor, ranges: list[list[float]]) -> torch.Tensor:
    low, high = _range_tensors(ranges, images.ndim - 2, images.device)
    return (2 * (images.clamp(low, high) - low) / (high - low) - 1).float()


def from_model_range(samples: torch.Tensor, ranges: list[list[float]]) -> torch.Tensor:
    low, high = _range_tensors(ranges, samples.ndim - 2, samples.device)
    return (samples.clamp(-1, 1) + 1) / 2 * (high - low) + low


def train_diffusion(model: torch.nn.Module, loader, settings: DiffusionSettings, ranges: list[list[float]],
                    device: torch.device) -> list[float]:
    """DDPM training (predict the velocity v of the noised crop, MSE); returns the mean loss of each epoch."""
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, prediction_type=PREDICTION, **NOISE_SCHEDULE)
    inferer = DiffusionInferer(scheduler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    model.train()
    losses = []
    for epoch in range(settings.epochs):
        epoch_losses = []
        with tqdm(range(settings.steps_per_epoch), desc=f"Diffusion epoch {epoch + 1}/{settings.epochs}",
                  unit="step") as bar:
            for _ in bar:
                images = to_model_range(next(loader)["data"], ranges).to(device)
                noise = torch.randn_like(images)
                timesteps = torch.randint(0, TRAIN_TIMESTEPS, (images.shape[0],), device=device)
                target = scheduler.get_velocity(images, noise, timesteps)
                loss = F.mse_loss(inferer(images, model, noise, timesteps).float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.4f}")
        losses.append(float(np.mean(epoch_losses)))
        print(f"nnkd: diffusion epoch {epoch + 1}/{settings.epochs}: mean loss {losses[-1]:.4f}")
    return losses


def sample_images(model: torch.nn.Module, seeds: list[int], in_channels: int, settings: DiffusionSettings,
                  ranges: list[list[float]], inference_steps: int, device: torch.device):
    """DDIM sampling (deterministic, eta 0) in batches; yields each seed's image (C, *size) in normalised space.
    Each image's starting noise comes from its own seed, so a case is the same whichever batch it is in."""
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, prediction_type=PREDICTION, **NOISE_SCHEDULE)
    scheduler.set_timesteps(inference_steps)
    model.eval()
    batches = [seeds[i:i + settings.batch_size] for i in range(0, len(seeds), settings.batch_size)]
    with tqdm(total=len(batches) * len(scheduler.timesteps), desc=f"Sampling {len(seeds)} case(s)",
              unit="step") as bar, torch.no_grad():
        for batch in batches:
            x = torch.stack([torch.randn((in_channels, *settings.size), generator=torch.Generator().manual_seed(s))
                             for s in batch]).to(device)
            for t in scheduler.timesteps:
                velocity = model(x, timesteps=torch.full((len(batch),), int(t), device=device))
                x, _ = scheduler.step(velocity, int(t), x)
                bar.update(1)
            yield from from_model_range(x, ranges).cpu().numpy()


def synthetic_properties(config: PreprocessedConfiguration, spatial_shape: tuple[int, ...]) -> dict:
    """nnU-Net case properties of a crop at the configuration's spacing: as if a raw image of exactly that grid
    had been preprocessed (no cropping, no resampling). 2D: the slice axis gets the dataset's median spacing."""
    manager = config.plans_manager
    target = list(config.configuration_manager.spacing)
    if len(target) == 2:
        target = [manager.plans["original_median_spacing_after_transp"][0], *target]
    shape = tuple(int(s) for s in spatial_shape)
    return {"spacing": [float(target[i]) for i in manager.transpose_backward], "shape_before_cropping": shape,
            "bbox_used_for_cropping": [[0, s] for s in shape], "shape_after_cropping_and_before_resampling": shape}


def case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _load_checkpoint(path: Path, expected: dict) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NnkdError(f"the diffusion checkpoint {path} is unreadable ({type(e).__name__})",
                        "delete it to train the model again") from e
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise NnkdError(f"{path} is not an nnkd diffusion checkpoint", "delete it to train the model again")
    trained_with = checkpoint["trained_with"]
    differs = {k: trained_with.get(k) for k, v in expected.items() if trained_with.get(k) != v}
    if differs:
        wanted = {k: expected[k] for k in differs}
        raise NnkdError(f"the diffusion model in {path} was trained with {differs}, this run asks for {wanted}",
                        "rerun with its settings to add cases, or write a new set (--name or -o), or delete the "
                        "checkpoint to retrain")
    return checkpoint


def write_sample_grid(path: Path, real: np.ndarray, synthetic: np.ndarray, ranges: list[list[float]]) -> None:
    """PNG of real training crops above synthetic cases, per channel (3D: the middle slice of the first axis)."""
    from matplotlib.figure import Figure

    def middle_slices(images: np.ndarray) -> np.ndarray:  # (N, C, ..., Y, X) -> (N, C, Y, X)
        volumes = images.reshape(*images.shape[:2], -1, *images.shape[-2:])
        return volumes[:, :, volumes.shape[2] // 2]

    rows = [(f"real ch{c}", middle_slices(real)[:, c], c) for c in range(real.shape[1])]
    rows += [(f"synthetic ch{c}", middle_slices(synthetic)[:, c], c) for c in range(synthetic.shape[1])]
    columns = max(len(images) for _, images, _ in rows)
    figure = Figure(figsize=(1.6 * columns, 1.7 * len(rows)))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, (title, images, channel) in enumerate(rows):
        for column, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if column < len(images):
                ax.imshow(images[column], cmap="gray", vmin=ranges[channel][0], vmax=ranges[channel][1])
        axes[row][0].set_title(title, fontsize=8, loc="left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


def _trained_model(checkpoint: dict | None, checkpoint_path: Path, trained_with: dict, config, settings,
                   loader, device) -> tuple[torch.nn.Module, list[list[float]]]:
    """The checkpoint's model and intensity ranges, or a newly trained model saved (atomically) as the checkpoint."""
    model = build_model(settings, trained_with["in_channels"])
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        print(f"nnkd: reusing the diffusion model in {checkpoint_path} (its weights and intensity ranges; "
              f"no training)")
        return model.to(device), checkpoint["intensity_range"]
    ranges = intensity_ranges(config)
    print(f"nnkd: training the diffusion model on {settings.size} crops of {config.data_folder} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {device.type})")
    losses = train_diffusion(model.to(device), loader, settings, ranges, device)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "trained_with": trained_with, "intensity_range": ranges,
                "losses": losses, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, buffer)
    write_bytes_atomic(checkpoint_path, buffer.getvalue())
    return model, ranges


def _add_cases(tset: TransferSet, config: PreprocessedConfiguration, model: torch.nn.Module,
               settings: DiffusionSettings, ranges: list[list[float]], request: SynthesisRequest, device) -> None:
    """Sample the cases the set still lacks up to `request.count` and write each as soon as it is made."""
    todo = [i for i in range(request.count) if not tset.has_case(f"{CASE_PREFIX}{i:05d}")]
    print(f"nnkd: {request.count - len(todo)} of {request.count} synthetic case(s) already in {tset.folder}; "
          f"sampling {len(todo)} with {request.inference_steps} DDIM steps")
    seeds = [case_seed(request.seed, i) for i in todo]
    samples = sample_images(model, seeds, config.num_channels, settings, ranges, request.inference_steps, device)
    for index, seed, image in zip(todo, seeds, samples):
        data = image[:, None] if len(settings.size) == 2 else image
        seg = np.zeros((1, *data.shape[1:]), dtype=np.int16)
        properties = synthetic_properties(config, data.shape[1:])
        properties["class_locations"] = unlabeled_class_locations(seg, config.plans_manager, config.dataset_json)
        properties["nnkd_transfer"] = "synthetic"
        case = f"{CASE_PREFIX}{index:05d}"
        tset.write_case(case, data, seg, properties, config)
        tset.record_case(case, {"seed": seed, "inference_steps": request.inference_steps})


def synthesize(request: SynthesisRequest) -> TransferSet:
    """Train (or reuse) the diffusion model and fill the synthetic set up to `request.count` cases. Every check
    that can fail on input runs before the model is built, so bad input writes nothing."""
    _check_request(request)
    config = PreprocessedConfiguration.load(request.dataset, request.plans, request.configuration, need_data=True)
    settings = DiffusionSettings(size=_crop_size(request, config.configuration_manager.patch_size),
                                 channels=tuple(request.channels), epochs=request.epochs,
                                 steps_per_epoch=request.steps_per_epoch, batch_size=request.batch_size)
    tset = _output_set(request, config)
    tset.check("synthetic", config)
    checkpoint_path = tset.meta_folder / CHECKPOINT
    trained_with = {**config.identity(), "in_channels": config.num_channels, **settings.to_json()}
    checkpoint = _load_checkpoint(checkpoint_path, trained_with) if checkpoint_path.is_file() else None
    _require_monai()
    device = resolve_device(request.device)
    torch.manual_seed(request.seed)
    np.random.seed(request.seed)  # nnU-Net's data loader draws crops from numpy's global generator
    loader = crop_loader(config, settings.size, settings.batch_size)
    model, ranges = _trained_model(checkpoint, checkpoint_path, trained_with, config, settings, loader, device)
    tset.start("synthetic", config,
               source=f"diffusion model trained on the preprocessed training images in {config.data_folder}",
               made_with={"checkpoint": str(checkpoint_path), "in_channels": config.num_channels,
                          **settings.to_json(), "intensity_range": ranges, "sampler": "DDIM",
                          "case": "one crop of the trained size (2D: a single-slice volume)"})
    _add_cases(tset, config, model, settings, ranges, request, device)

    shown = tset.open(tset.cases()[:GRID_COLUMNS])
    synthetic = np.stack([np.asarray(shown.load_case(c)[0][:]) for c in shown.identifiers])
    real = np.concatenate([next(loader)["data"].numpy() for _ in range(-(-len(synthetic) // settings.batch_size))])
    write_sample_grid(tset.meta_folder / GRID, real[:len(synthetic)], synthetic, ranges)
    print(f"nnkd: {len(tset.cases())} synthetic case(s) in {tset.folder}; samples: {tset.meta_folder / GRID}")
    return tset
