"""TS-KD's transfer set in nnU-Net's pipeline: its cases as one nnU-Net dataset, and steps that join nnU-Net's
labelled batch with a batch of transfer cases (teacher targets only)."""

from pathlib import Path

import torch

from nnunetv2.training.dataloading.nnunet_dataset import file_ending_dataset_mapping

from nnkd.errors import NnkdError
from nnkd.nnunet_compat import finish_loader


class TransferDataset:
    """The cases of one or more transfer-set folders (nnU-Net's preprocessed format) as one dataset for nnU-Net's
    loader; identifiers are `<set index>/<case>` so cases of different sets never collide. A source is a folder
    (all its cases) or (folder, cases) — e.g. the dataset's own preprocessed folder and the training cases that
    `--labeled` left unlabelled."""

    def __init__(self, sources: list[Path | tuple[Path, list[str]]]):
        self.datasets = []
        self.identifiers = []
        for index, source in enumerate(sources):
            folder, chosen = source if isinstance(source, tuple) else (source, None)
            endings = [e for e in file_ending_dataset_mapping if any(folder.glob(f"*.{e}"))]
            if len(endings) != 1:
                raise NnkdError(f"{folder} holds no cases in nnU-Net's preprocessed format",
                                "give a transfer-set folder (nnkd_synthesize, --unlabeled)")
            dataset_class = file_ending_dataset_mapping[endings[0]]  # beside the cases may lie a manifest, PNGs
            cases = dataset_class.get_identifiers(str(folder)) if chosen is None else list(chosen)
            if not cases:
                raise NnkdError(f"the transfer set {folder} holds no cases",
                                "fill it with nnkd_synthesize or --unlabeled DIR")
            self.datasets.append(dataset_class(str(folder), cases))
            self.identifiers += [f"{index}/{case}" for case in cases]

    def load_case(self, identifier: str):
        index, case = identifier.split("/", 1)
        return self.datasets[int(index)].load_case(case)


def check_transfer_set(folder: Path, channels: int) -> None:
    """Stop before training if a transfer set is missing, empty or of other channels than the dataset."""
    if not folder.is_dir():
        raise NnkdError(f"transfer set {folder} does not exist", "give the folder nnkd_synthesize wrote")
    dataset = TransferDataset([folder])
    data = dataset.load_case(dataset.identifiers[0])[0]
    if data.shape[0] != channels:
        raise NnkdError(f"transfer set {folder} has {data.shape[0]} channel(s), the dataset {channels}",
                        "make the transfer set from this dataset")


def _concat(a, b):
    if isinstance(a, (list, tuple)):
        return [torch.cat([x, y]) for x, y in zip(a, b)]
    return torch.cat([a, b])


class MixedBatches:
    """Each step: nnU-Net's labelled batch, then a batch of transfer cases; `labeled_count` says where the
    labelled samples end (the segmentation loss sees only those)."""

    def __init__(self, labeled, transfer):
        self.labeled = labeled
        self.transfer = transfer

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        labeled, transfer = next(self.labeled), next(self.transfer)
        return {"data": torch.cat([labeled["data"], transfer["data"]]),
                "target": _concat(labeled["target"], transfer["target"]),
                "keys": [*labeled["keys"], *transfer["keys"]], "labeled_count": len(labeled["data"])}

    def finish_transfer(self) -> None:
        """Stop the transfer loader's worker processes (nnU-Net stops the labelled one)."""
        finish_loader(self.transfer)
