"""Every private member of nnU-Net (and of the libraries it drives) that nnkd touches, in one place.

nnU-Net promises nothing about names that start with an underscore, so nnkd reaches them only through this
module, and tests/test_nnunet_compat.py fails when an nnU-Net release renames or drops one of them. Trainer
hooks nnkd overrides (`_build_loss`, `_do_i_compile`) are listed in `OVERRIDDEN_TRAINER_HOOKS` for the same test.
"""

import numpy as np
from torch import nn

# nnUNetTrainer methods with a leading underscore that nnkd's trainers override or call through super()
OVERRIDDEN_TRAINER_HOOKS = ("_build_loss", "_do_i_compile")

# The keys of nnUNetTrainer.save_checkpoint's dict, which nnkd writes itself (plus its own "nnkd" entry)
# and which nnU-Net's load_checkpoint, predictor and nnkd's teachers read back.
CHECKPOINT_KEYS = ("network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                   "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes")


def stock_checkpoint(trainer, network_weights: dict) -> dict:
    """The checkpoint dict nnUNetTrainer.save_checkpoint writes, for `trainer` and the plain student's weights."""
    return {
        "network_weights": network_weights,
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
    }


def sample_foreground_locations(seg: np.ndarray, keys: list) -> dict:
    """nnU-Net's preprocessor's `class_locations` of a segmentation (DefaultPreprocessor's private helper)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    return DefaultPreprocessor._sample_foreground_locations(seg, keys)


def training_loader(trainer, dataset, batch_size: int, oversample_foreground_percent: float):
    """nnU-Net's training pipeline of `trainer` (its patch size, augmentation with the trainer's own transform
    overrides, deep-supervision targets, worker processes) over another dataset with another batch size: the
    training half of nnUNetTrainer.get_dataloaders, which reads the trainer's private
    `_get_deep_supervision_scales`."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    labels = trainer.label_manager
    patch_size = trainer.configuration_manager.patch_size
    rotation, dummy_2d, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms = trainer.get_training_transforms(
        patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes, dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=trainer.is_cascaded,
        foreground_labels=labels.foreground_labels,
        regions=labels.foreground_regions if labels.has_regions else None, ignore_label=labels.ignore_label)
    loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size, patch_size, labels,
                              oversample_foreground_percent=oversample_foreground_percent,
                              sampling_probabilities=None, pad_sides=None, transforms=transforms,
                              probabilistic_oversampling=trainer.probabilistic_oversampling)
    processes = get_allowed_n_proc_DA()
    if processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=processes,
                                        num_cached=max(6, processes // 2), seeds=None,
                                        pin_memory=trainer.device.type == "cuda", wait_time=0.002)


def finish_loader(loader) -> None:
    """Stop a batchgenerators augmenter's worker processes (its private `_finish`); plain loaders have none."""
    if hasattr(loader, "_finish"):
        loader._finish()


def uncompiled(module: nn.Module) -> nn.Module:
    """The module torch.compile wrapped (torch's private `_orig_mod`), or the module itself."""
    from torch._dynamo import OptimizedModule

    return module._orig_mod if isinstance(module, OptimizedModule) else module
