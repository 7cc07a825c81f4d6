"""`multiteacher`: several teachers of any family at once (nnkd.distill.multi_teacher)."""

import torch
import torch.distributed as dist
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from nnkd.distill.feature import pair_stages_by_resolution, resize_to
from nnkd.distill.logits import kd_kl_loss
from nnkd.distill.multi_teacher import (BALANCE_MODES, STANDARDIZATIONS, FeatureStandardizer, LossBalancer,
                                        TeacherAdaptor, adaptor_loss, fit_standardizers,
                                        stage_index)
from nnkd.errors import NnkdError
from nnkd.teachers.base import TeacherOutput
from nnkd.teacher_spec import TeacherSpec
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule


class nnKDTrainer_MultiTeacher(nnKDTrainer):
    """Several teachers at once (any mix of families, 2D and 3D). Per teacher k: a stage of its features
    (default its last, the embedding), standardised with statistics of the first batches; an adaptor MLP on
    the student stage of closest resolution, resized to that teacher's grid; L_k = cosine distance +
    smooth-L1, plus logit KD when the teacher has logits for the dataset's labels. The L_k are combined by
    fixed, uncertainty or learned weights (nnkd.distill.multi_teacher.LossBalancer)."""

    method = "multiteacher"
    needs_student_features = True
    # takes_several_teachers: its row in nnkd.method_table (teachers="several")
    balance = "fixed"  # fixed | uncertainty | learned
    teacher_weights: tuple[float, ...] | None = None  # balance=fixed: one weight per teacher; None = 1 each
    balance_temperature = 1.0  # balance=learned: τ of the entropy term
    standardization = "phi-s"  # phi-s | channel | none
    standardization_batches = 4  # batches whose teacher features give the statistics
    teacher_stages: tuple[int, ...] | None = None  # one feature stage per teacher (negative from the end); None = last
    cosine_weight = 1.0
    smooth_l1_weight = 1.0
    kd_temperature = 3.0  # logit KD, for teachers with logits of the dataset's labels
    logit_weight = 1.0
    hyperparameter_rules = {
        "balance": Rule(choices=BALANCE_MODES), "teacher_weights": Rule(minimum=0, per_teacher=True),
        "balance_temperature": Rule(positive=True), "standardization": Rule(choices=STANDARDIZATIONS),
        "standardization_batches": Rule(minimum=1), "teacher_stages": Rule(per_teacher=True),
        "cosine_weight": Rule(minimum=0), "smooth_l1_weight": Rule(minimum=0), "kd_temperature": Rule(positive=True),
        "logit_weight": Rule(minimum=0)}
    hyperparameters = tuple(hyperparameter_rules)

    def setup_teachers(self) -> None:
        entries = (self.run_config.teachers if self.run_config else None) or []
        if not entries:
            raise NnkdError(f"{type(self).__name__} needs teachers but {self.output_folder}/teacher.json lists none",
                            "start the run with nnkd_train --method multiteacher --teacher SPEC_A --teacher SPEC_B")
        self.teachers = [self.build_teacher(entry) for entry in entries]
        for teacher in self.teachers:
            self.check_teacher(teacher)
        self.teacher_names = [f"t{i}_{TeacherSpec.parse(t.spec).family}" for i, t in enumerate(self.teachers)]
        self.logit_teachers = [t.has_logits and dict(t.labels) == dict(self.dataset_json["labels"])
                               for t in self.teachers]
        for name, teacher, logits in zip(self.teacher_names, self.teachers, self.logit_teachers):
            if teacher.has_logits and not logits:
                self.print_to_log_file(f"multiteacher: {name} has logits for other labels; only its features are used")

    def build_kd_helpers(self) -> nn.Module:
        stages = [-1] * len(self.teachers) if self.teacher_stages is None else [int(s) for s in self.teacher_stages]
        channels, strides = self.student_stage_layout()
        self.chosen_teacher_stages, self.student_stages = [], []
        standardizers, adaptors = [], []
        for name, teacher, stage, logits in zip(self.teacher_names, self.teachers, stages, self.logit_teachers):
            stage = stage_index(stage, len(teacher.feature_channels), name)
            student_stage = pair_stages_by_resolution([teacher.feature_strides[stage]], strides)[0]
            standardizer = FeatureStandardizer(teacher.feature_channels[stage], self.standardization)
            standardizers.append(standardizer)
            adaptors.append(TeacherAdaptor(channels[student_stage], standardizer.out_channels,
                                           len(self.configuration_manager.patch_size)))
            self.chosen_teacher_stages.append(stage)
            self.student_stages.append(student_stage)
            self.print_to_log_file(f"multiteacher: {name} ({teacher.spec}) stage {stage} "
                                   f"({teacher.feature_channels[stage]} channels) ← student stage {student_stage} "
                                   f"through an adaptor to {standardizer.out_channels} standardised channels"
                                   f"{', plus logit KD' if logits else ''}")
        return nn.ModuleDict({"standardizers": nn.ModuleList(standardizers), "adaptors": nn.ModuleList(adaptors),
                              "balancer": LossBalancer(len(self.teachers), self.balance, self.teacher_weights,
                                                       self.balance_temperature)})

    def teach(self, data: torch.Tensor) -> list[TeacherOutput]:
        """Every teacher in turn under no_grad, so only one teacher's activations are alive at a time."""
        return [teacher.infer(data) for teacher in self.teachers]

    def on_train_start(self):
        super().on_train_start()
        standardizers = list(self.kd_helpers.standardizers)
        if all(s.is_fitted for s in standardizers):
            return  # statistics from the checkpoint (--c) or standardization "none"
        batches = (self.teach(next(self.dataloader_train)["data"].to(self.device, non_blocking=True))
                   for _ in range(self.standardization_batches))
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            fit_standardizers(standardizers, batches, self.chosen_teacher_stages,
                              dist.all_reduce if self.is_ddp else None)
        for name, standardizer in zip(self.teacher_names, standardizers):
            self.print_to_log_file(f"multiteacher: {name} feature statistics ({self.standardization}) from "
                                   f"{self.standardization_batches} batch(es), {int(standardizer.rows.item())} "
                                   "positions")

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        helpers = self.kd_helpers
        losses = []
        for k, (name, output) in enumerate(zip(self.teacher_names, step.teacher)):
            target = helpers.standardizers[k](output.features[self.chosen_teacher_stages[k]])
            predicted = resize_to(helpers.adaptors[k](step.student_features[self.student_stages[k]]),
                                  target.shape[2:])
            loss = adaptor_loss(predicted, target, self.cosine_weight, self.smooth_l1_weight)
            if self.logit_teachers[k]:
                loss = loss + self.logit_weight * kd_kl_loss(step.student_logits, output.logits, self.kd_temperature,
                                                              regions=self.label_manager.has_regions)
            losses.append(loss)
            step.log[f"kd_{name}"] = loss.detach()
        weights = helpers.balancer.weights().detach()
        for name, weight in zip(self.teacher_names, weights):
            step.log[f"weight_{name}"] = weight
        return {"teachers": helpers.balancer(torch.stack(losses))}
