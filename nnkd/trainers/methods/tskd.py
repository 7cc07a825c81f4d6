"""`tskd`: TS-KD step 2, logit and feature KD from a task-tuned teacher with a transfer set."""

from pathlib import Path

import torch
from torch import nn

from nnkd.cache.loading import CachedTeacherDataset
from nnkd.nnunet_compat import training_loader
from nnkd.trainers.methods.feature import nnKDTrainer_Feature
from nnkd.trainers.methods.logit import LogitKD
from nnkd.trainers.nnkd_trainer import KDStep
from nnkd.trainers.settings import Rule
from nnkd.trainers.transfer_batches import MixedBatches, TransferDataset


class nnKDTrainer_TSKD(LogitKD, nnKDTrainer_Feature):
    """TS-KD step 2: distil a task-tuned teacher (`tuned:FOLDER`, or any teacher with logits) on a transfer set.
    Each step joins nnU-Net's labelled batch (segmentation + KD) with `transfer_ratio` × as many transfer cases
    (unlabelled, synthetic, or the training cases `--labeled` left unlabelled: KD only, no segmentation term).
    KD = logit KL (T², as `logit`) + the FitNets feature term (as `feature`; `feature_weight=0` drops it)."""

    method = "tskd"
    needs_teacher_logits = True
    # takes_transfer_set: its row in nnkd.method_table (transfer_set=True)
    transfer_ratio = 1.0  # transfer samples per labelled sample in each step (rounded, at least 1 with a set)
    hyperparameters = nnKDTrainer_Feature.hyperparameters + LogitKD.logit_hyperparameters + ("transfer_ratio",)
    hyperparameter_rules = {"transfer_ratio": Rule(minimum=0)}

    without_teacher_features = ("add --hp feature_weight=0 (logit KD only, which the cache serves) or drop "
                                "--teacher-cache")

    @classmethod
    def uses_teacher_features(cls, settings: dict) -> bool:
        return bool(settings.get("feature_weight", cls.feature_weight))

    def initialize(self):
        if not self.was_initialized:  # without the feature term: no student hooks, no projectors
            self.needs_student_features = bool(self.feature_weight)
        super().initialize()

    def build_kd_helpers(self) -> nn.Module | None:
        return super().build_kd_helpers() if self.feature_weight else None

    def open_teacher_cache(self):
        """The cache must also hold the training cases `--labeled` left unlabelled: they are the transfer set."""
        cache = super().open_teacher_cache()
        cache.check(self.unlabeled_training_cases(), self.run_config.teacher.spec)
        return cache

    def transfer_sources(self) -> list[Path | tuple[Path, list[str]]]:
        """The transfer-set folders (`--unlabeled`, `--synthetic`) and, with `--labeled N`, the fold's other
        training cases as unlabelled images (the low-label regime: few labels, many images)."""
        sources = [Path(f) for f in (self.run_config.transfer if self.run_config else None) or []]
        remainder = self.unlabeled_training_cases()
        return sources + ([(Path(self.preprocessed_dataset_folder), remainder)] if remainder else [])

    def get_dataloaders(self):
        """nnU-Net's loaders, plus a training loader over the transfer set: nnU-Net's training pipeline (same
        patch size and augmentation) with the transfer batch size and no foreground oversampling (transfer cases
        have no labels)."""
        labeled, validation = super().get_dataloaders()
        sources = self.transfer_sources()
        if not sources or self.transfer_ratio <= 0:
            return labeled, validation
        count = max(1, round(self.batch_size * self.transfer_ratio))
        dataset = TransferDataset(sources)
        if self.teacher_cache is not None:  # only the fold's own cases: "0/<case>" is <case> in the cache
            dataset = CachedTeacherDataset(dataset, self.teacher_cache, lambda i: i.split("/", 1)[1])
        transfer = training_loader(self, dataset, count, oversample_foreground_percent=0.0)
        names = [str(s[0]) + f" (the {len(s[1])} training case(s) --labeled left unlabelled)"
                 if isinstance(s, tuple) else str(s) for s in sources]
        self.print_to_log_file(f"tskd: each step {self.batch_size} labelled + {count} transfer sample(s); transfer "
                               f"set: {len(dataset.identifiers)} case(s) in {', '.join(names)}")
        return MixedBatches(labeled, transfer), validation

    def segmentation_loss(self, outputs, target, batch: dict) -> torch.Tensor:
        """nnU-Net's loss on the labelled samples only: transfer samples carry no segmentation."""
        count = batch.get("labeled_count")
        if count is None:
            return self.loss(outputs, target)
        def labeled(x):
            return [t[:count] for t in x] if isinstance(x, (list, tuple)) else x[:count]
        return self.loss(labeled(outputs), labeled(target))

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        terms = {"logit": self.logit_term(step)}
        if self.feature_weight:
            terms.update(super().distillation_terms(step))
        return terms

    def on_train_end(self):
        if isinstance(self.dataloader_train, MixedBatches):
            self.dataloader_train.finish_transfer()
            self.dataloader_train = self.dataloader_train.labeled  # nnU-Net shuts this one down
        super().on_train_end()
