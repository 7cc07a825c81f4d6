"""Has a training run converged? nnU-Net's EMA pseudo Dice on the validation patches, judged by a stated
plateau criterion, so that a teacher-vs-student comparison can say its teacher had finished learning."""

from dataclasses import asdict, dataclass
from pathlib import Path

# The default criterion: over the last quarter of the epochs, the EMA pseudo Dice gains less than 0.2 points.
PLATEAU_SHARE = 0.25
PLATEAU_GAIN = 0.002


@dataclass(frozen=True)
class Plateau:
    converged: bool
    gain: float  # best EMA pseudo Dice of the last `share` of the epochs minus the value just before them
    epochs: int
    window: int  # epochs in the last share
    share: float = PLATEAU_SHARE
    min_gain: float = PLATEAU_GAIN

    @property
    def criterion(self) -> str:
        return (f"EMA pseudo Dice gains < {100 * self.min_gain:g} points over the last {self.share:.0%} of the "
                f"epochs")

    def to_json(self) -> dict:
        return asdict(self) | {"criterion": self.criterion}


def plateau(ema: list[float], share: float = PLATEAU_SHARE, min_gain: float = PLATEAU_GAIN) -> Plateau:
    """The plateau criterion on an EMA curve (one value per epoch): converged when the best value of the last
    `share` of the epochs is less than `min_gain` above the value just before that window. A curve too short
    to have a window and a value before it (under 2 epochs, or a window of the whole run) is not converged."""
    if not 0 < share < 1:
        raise ValueError(f"share {share} is not in (0, 1)")
    window = max(1, round(len(ema) * share))
    if len(ema) < 2 or window >= len(ema):
        return Plateau(False, float("nan"), len(ema), window, share, min_gain)
    gain = max(ema[-window:]) - ema[-window - 1]
    return Plateau(gain < min_gain, float(gain), len(ema), window, share, min_gain)


def training_curve(fold_dir: Path) -> dict:
    """nnU-Net's logged curves of a trained fold (checkpoint_final.pth, else checkpoint_latest.pth): per epoch
    the EMA pseudo Dice, the mean pseudo Dice, the training and validation losses and the epoch's seconds."""
    from nnkd.checkpoints import load_checkpoint

    checkpoint = next((fold_dir / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth")
                       if (fold_dir / n).is_file()), None)
    if checkpoint is None:
        raise FileNotFoundError(f"{fold_dir} holds no checkpoint")
    logging = load_checkpoint(checkpoint)["logging"]
    curve = {key: [float(v) for v in logging[key]] for key in ("ema_fg_dice", "mean_fg_dice", "train_losses", "val_losses")}
    curve["epoch_seconds"] = [float(e - s) for s, e in zip(logging["epoch_start_timestamps"],
                                                           logging["epoch_end_timestamps"])]
    return curve
