"""Cached soft labels through nnU-Net's own dataloader and augmentation, without copying either.

The dataset wrapper hands nnU-Net's dataloader each case's image with the probabilities appended as extra
channels, read lazily, so the loader crops both with one bounding box. The transform wrapper moves those
channels into batchgenerators' `regression_target` before nnU-Net's transforms run: the spatial
transforms (rotation, scaling, mirroring) resample it exactly like the image (linear interpolation, zero
padding), the intensity transforms only touch `image`. Afterwards it is appended to the image again, so
the batch's `data` carries image channels first, then the probabilities.
"""

import numpy as np
import torch


class ImageWithSoftLabels:
    """(image channels + classes, *spatial), sliced without reading the rest of either array."""

    def __init__(self, image, probabilities):
        self.image = image
        self.probabilities = probabilities
        self.shape = (image.shape[0] + probabilities.shape[0], *image.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if index and index[0] != slice(None):
            raise IndexError("ImageWithSoftLabels is sliced over space only")
        region = (slice(None), *index[1:])
        return np.concatenate([np.asarray(self.image[region], dtype=np.float32), self.probabilities[region]])


class CachedTeacherDataset:
    """An nnU-Net dataset whose `load_case` returns ImageWithSoftLabels as the image. `case_of` maps the
    dataset's identifier to the cached case (a transfer dataset's `0/case` to `case`)."""

    def __init__(self, dataset, cache, case_of=None):
        self.dataset = dataset
        self.cache = cache
        self.case_of = case_of

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        case = self.case_of(identifier) if self.case_of else identifier
        return ImageWithSoftLabels(data, self.cache.open_case(case)), seg, seg_prev, properties

    def __getattr__(self, name):  # identifiers, keys(), … of the wrapped dataset
        if name in ("dataset", "cache", "case_of"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)


class SoftLabelAugmentation:
    """nnU-Net's training transforms, applied to the image and, as a regression target, the soft labels."""

    def __init__(self, transforms, image_channels: int):
        self.transforms = transforms
        self.image_channels = image_channels

    def __call__(self, **data_dict) -> dict:
        stacked = data_dict["image"]
        data_dict["image"] = stacked[: self.image_channels]
        data_dict["regression_target"] = stacked[self.image_channels:]
        out = self.transforms(**data_dict)
        out["image"] = torch.cat([out["image"], out.pop("regression_target").to(out["image"].dtype)])
        return out


def split_soft_labels(data: torch.Tensor, image_channels: int, regions: bool, min_mass: float = 0.5):
    """(image, probabilities, valid mask) from a batch's `data`. Class probabilities are renormalised per
    voxel (linear resampling next to padding lowers their sum); voxels whose sum is below `min_mass` lay
    outside the case and are masked out of the KD loss. Region probabilities are independent and kept
    as they are (padding reads as background, as nnU-Net's own padding label does)."""
    image, probabilities = data[:, :image_channels], data[:, image_channels:].float()
    if regions:
        return image, probabilities, None
    mass = probabilities.sum(1, keepdim=True)
    return image, probabilities / mass.clamp_min(1e-6), mass[:, 0] >= min_mass
