"""Whether a teacher can teach a student of given plans: a rule on plain facts, used by training and the cache."""

import numpy as np
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher


def check_teacher_fits(teacher: Teacher, plans_manager, configuration: str, dataset_json: dict,
                       needs_logits: bool, user: str) -> None:
    """Channels, dimensionality, labels (when the teacher's logits are needed), spacing and normalization must
    fit; `user` names what needs the logits in the error (e.g. "method logit", "the teacher cache")."""
    cm = plans_manager.get_configuration(configuration)
    channels = determine_num_input_channels(plans_manager, cm, dataset_json)
    if teacher.in_channels != channels:
        raise NnkdError(f"the teacher takes {teacher.in_channels} input channel(s), the dataset has {channels}",
                        "use a teacher trained on images with the same channels")
    if len(cm.patch_size) not in teacher.serves_dims:
        served = " or ".join(f"{d}D" for d in teacher.serves_dims)
        raise NnkdError(f"the teacher is {teacher.spatial_dims}D, configuration {configuration} is "
                        f"{len(cm.patch_size)}D, and the teacher takes only {served} patches",
                        f"pick a {served} configuration, or a teacher that serves {len(cm.patch_size)}D patches "
                        "(2D image encoders such as sam run on 3D patches slice by slice)")
    if needs_logits:
        if not teacher.has_logits:
            raise NnkdError(f"{user} needs teacher logits, but {teacher.spec} has none",
                            "use a segmentation teacher or a feature method")
        if dict(teacher.labels) != dict(dataset_json["labels"]):
            raise NnkdError(f"teacher labels {teacher.labels} differ from the dataset's {dataset_json['labels']}",
                            "logit KD needs the same label set; use a feature method instead")
    expected = teacher.plans_configuration
    if expected is None:
        return
    transpose = list(plans_manager.transpose_forward)
    if not np.allclose(expected["spacing"], cm.spacing, rtol=1e-3) or list(expected["transpose_forward"]) != transpose:
        raise NnkdError(f"the teacher expects spacing {expected['spacing']} "
                        f"(transpose {expected['transpose_forward']}),"
                        f" the student's data has {list(cm.spacing)} (transpose {transpose})",
                        "plan the student from the teacher's plans (--teacher-plans)")
    intensities = plans_manager.plans["foreground_intensity_properties_per_channel"]
    if list(expected["normalization_schemes"]) != list(cm.normalization_schemes) or (
            "CTNormalization" in cm.normalization_schemes and expected["intensity_properties"] != intensities):
        raise NnkdError(f"the teacher expects {expected['normalization_schemes']} normalization, the student's data "
                        f"uses {cm.normalization_schemes}",
                        "plan the student from the teacher's plans (--teacher-plans)")
