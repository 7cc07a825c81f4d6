"""nnkd.evaluation: a teacher as nnU-Net's predictor runs it, and scores from nnU-Net's evaluation."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from nnkd.evaluation.measure import TeacherLogits, evaluate, teacher_network
from nnkd.teachers.base import Teacher, TeacherOutput


class _Wrapped(Teacher):
    spatial_dims, in_channels, feature_channels, feature_strides = 3, 1, [2], [(1, 1, 1)]
    labels = {"background": 0, "a": 1}

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x):
        return TeacherOutput([x], self.conv(x))


def test_an_nnunet_teacher_runs_as_its_own_network_any_other_wrapped(teacher):
    from nnkd.teachers.registry import create_teacher

    nnunet = create_teacher(teacher["spec"], fold=0)
    run = teacher_network([nnunet, nnunet], {"unused": True}, "2d")
    assert run.native and run.network is nnunet.networks[0] and len(run.weights) == 2
    assert run.plans is nnunet.plans and run.configuration == "3d_fullres"  # its own plans, not the student's

    other = _Wrapped()
    run = teacher_network([other], {"student": "plans"}, "3d_fullres")
    assert not run.native and isinstance(run.network, TeacherLogits) and run.plans == {"student": "plans"}
    x = torch.randn(1, 1, 4, 4, 4)
    run.network.load_state_dict(run.weights[0])
    assert torch.equal(run.network(x), other(x).logits)


def test_evaluate_scores_predictions_with_nnunets_evaluation_from_plain_dicts(planned, tmp_path):
    raw = Path(planned["env"]["nnUNet_raw"]) / "Dataset991_Synthetic"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    plans = json.loads((planned["preprocessed"] / "nnUNetPlans.json").read_text())
    labels = sorted((raw / "labelsTs").glob("*.nii.gz"))
    for label in labels:  # the reference itself: Dice 1 for every class present
        shutil.copy(label, tmp_path / label.name)
    scores = evaluate(tmp_path, raw, dataset_json, plans, "labelsTs")
    assert scores["dice"] == 1 and set(scores["dice_per_class"]) == {"1", "2", "3"}
    assert (tmp_path / "summary.json").is_file() and not list(tmp_path.glob("*plans*"))
    assert np.isclose(json.loads((tmp_path / "summary.json").read_text())["foreground_mean"]["Dice"], 1)


def test_layer_rates_count_every_flop_in_both_runtimes_and_time_every_layer():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnkd.evaluation.layer_rates import format_rates, network_rates
    from nnkd.planners.network_cost import count_gflops

    for conv, norm, patch in [(torch.nn.Conv3d, torch.nn.InstanceNorm3d, (16, 16, 16)),
                              (torch.nn.Conv2d, torch.nn.InstanceNorm2d, (32, 32))]:
        torch.manual_seed(0)
        network = PlainConvUNet(1, 3, (4, 8, 16), conv, 3, (1, 2, 2), 2, 3, 2, True, norm, {"affine": True},
                                None, None, torch.nn.LeakyReLU, {"inplace": True}).eval()
        rates = network_rates(network, 1, patch, repeats=2)
        for runtime, summary in rates.items():
            assert np.isclose(summary["gflops"], count_gflops(network, 1, patch), rtol=1e-6), runtime
            assert np.isclose(sum(row["share"] for row in summary["rows"]), 1)
            assert [r["seconds"] for r in summary["rows"]] == sorted((r["seconds"] for r in summary["rows"]),
                                                                     reverse=True)
            assert summary["reference_gflop_per_s"] > 0 and "Conv" in summary["share_by_kind"]
            assert "| layer group |" in format_rates("tiny", runtime, summary)
        convs = {runtime: sorted(r["signature"] for r in summary["rows"] for _ in range(r["calls"])
                                 if r["kind"] in ("Conv", "ConvTranspose"))
                 for runtime, summary in rates.items()}
        assert convs["torch"] == convs["onnx"] and len(convs["torch"]) == 13  # 6 + 4 convs, 2 transposed, the head


def test_case_latency_times_every_step_of_a_case_and_pools_the_rounds(planned, monkeypatch):
    """nnkd.evaluation.case_latency (deploy_latency.py's measurement) on a test case of the planned dataset, in
    torch with random weights: every step timed, the patches counted, and two rounds pooled."""
    from nnkd.evaluation.case_latency import pool_rounds, time_cases
    from nnkd.inference.profile import STEPS
    from nnkd.plans import PreprocessedConfiguration, network_from_plans, num_input_channels

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, planned["env"][name])
    config = PreprocessedConfiguration.load("Dataset991_Synthetic", "nnKDPlans_tiny", "3d_fullres")
    plans, dataset_json = config.plans, config.dataset_json
    model = {"plans": plans, "dataset_json": dataset_json, "onnx": {},
             "network": network_from_plans(plans, "3d_fullres", dataset_json).eval(),
             "channels": num_input_channels(plans, "3d_fullres", dataset_json),
             "patch_size": plans["configurations"]["3d_fullres"]["patch_size"]}
    case = sorted((Path(planned["env"]["nnUNet_raw"]) / "Dataset991_Synthetic" / "imagesTs").glob("*_0000.nii.gz"))[:1]
    rounds = [time_cases(model, "3d_fullres", "torch", False, case, repeats=1) for _ in range(2)]
    assert all(len(r["runs"]) == 1 and set(r["runs"][0]["seconds"]) == set(STEPS) for r in rounds)
    assert rounds[0]["patches"] >= 1 and len(rounds[0]["original_shape"]) == 3
    pooled = pool_rounds(rounds, mirroring=False)
    assert pooled["runs"] == 2 and len(pooled["seconds_per_case_each_round"]) == 2
    assert 0 < pooled["seconds_per_case_min"] <= pooled["seconds_per_case"] and 0 < pooled["network_share"] < 1
