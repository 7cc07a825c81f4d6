"""nnU-Net's private members that nnkd uses (nnkd/nnunet_compat.py) still exist with the shape nnkd expects;
this fails when an nnU-Net release renames or drops one."""

import inspect
import re

import numpy as np

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnkd import nnunet_compat


def test_checkpoint_keys_are_nnunets():
    """nnkd writes nnU-Net's checkpoint dict itself: its keys must be exactly those nnU-Net's save_checkpoint
    writes, and every key nnU-Net's load_checkpoint reads must be among them."""
    saved = set(re.findall(r"'(\w+)':", inspect.getsource(nnUNetTrainer.save_checkpoint)))
    assert saved == set(nnunet_compat.CHECKPOINT_KEYS)
    read = set(re.findall(r"checkpoint\['(\w+)'\]", inspect.getsource(nnUNetTrainer.load_checkpoint)))
    assert read and read <= set(nnunet_compat.CHECKPOINT_KEYS)


def test_stock_checkpoint_fills_every_key():
    class Fake:
        class optimizer:
            state_dict = staticmethod(lambda: {"o": 1})
        grad_scaler = None
        class logger:
            get_checkpoint = staticmethod(lambda: {"l": 1})
        _best_ema = 0.5
        current_epoch = 3
        my_init_kwargs = {"fold": 0}
        inference_allowed_mirroring_axes = (0, 1)

    checkpoint = nnunet_compat.stock_checkpoint(Fake(), {"w": 1})
    assert tuple(checkpoint) == nnunet_compat.CHECKPOINT_KEYS
    assert checkpoint["current_epoch"] == 4 and checkpoint["trainer_name"] == "Fake"


def test_overridden_trainer_hooks_exist():
    for name in nnunet_compat.OVERRIDDEN_TRAINER_HOOKS:
        assert callable(getattr(nnUNetTrainer, name, None)), f"nnUNetTrainer.{name} is gone"


def test_sample_foreground_locations_matches_the_preprocessor():
    assert callable(getattr(DefaultPreprocessor, "_sample_foreground_locations", None))
    seg = np.zeros((1, 4, 4, 4), dtype=np.int16)
    seg[0, 1, 1, 1] = 1
    locations = nnunet_compat.sample_foreground_locations(seg, [1, 2])
    assert set(locations) == {1, 2} and len(locations[1]) == 1 and len(locations[2]) == 0


def test_augmenters_still_have_finish():
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    for cls in (MultiThreadedAugmenter, NonDetMultiThreadedAugmenter):
        assert callable(getattr(cls, "_finish", None))
    nnunet_compat.finish_loader(object())  # a plain loader has nothing to stop


def test_uncompiled_unwraps_torch_compile():
    import torch

    module = torch.nn.Linear(2, 2)
    assert nnunet_compat.uncompiled(module) is module
    assert nnunet_compat.uncompiled(torch.compile(module)) is module


def test_the_transfer_loader_builds_what_nnunets_get_dataloaders_builds():
    """training_loader repeats the training half of nnUNetTrainer.get_dataloaders for TS-KD's transfer set: every
    call it makes must still be in nnU-Net's method, so a change of nnU-Net's pipeline fails here, not silently."""
    assert callable(getattr(nnUNetTrainer, "_get_deep_supervision_scales", None))
    theirs = inspect.getsource(nnUNetTrainer.get_dataloaders)
    ours = inspect.getsource(nnunet_compat.training_loader)
    for call in ("_get_deep_supervision_scales()", "configure_rotation_dummyDA_mirroring_and_inital_patch_size()",
                 "get_training_transforms(", "nnUNetDataLoader(", "get_allowed_n_proc_DA()",
                 "SingleThreadedAugmenter(", "NonDetMultiThreadedAugmenter(", "probabilistic_oversampling",
                 "use_mask_for_norm", "foreground_regions", "ignore_label", "num_cached=max(6,"):
        assert call in theirs, f"nnUNetTrainer.get_dataloaders no longer has {call}"
        assert call in ours, call
