import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import PLANNED_ID, run_cli, tree_digest
from nnkd.plans import network_from_plans, num_input_channels
from nnkd.planners.architecture_search import StudentSearch
from nnkd.planners.budget import PRESETS, Budget
from nnkd.planners.student_planner import STUDENT_KEY, nnKDStudentPlanner

STUDENT_ONLY_KEYS = {"architecture", STUDENT_KEY}


def _plans(planned, name):
    return json.loads((planned["preprocessed"] / f"{name}.json").read_text())


def _instantiate(plans: dict, configuration: str, dataset_json: dict):
    """The network exactly as a stock nnU-Net builds it from the plans, on the CPU, and its cost."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    network = network_from_plans(plans, configuration, dataset_json)
    channels = num_input_channels(plans, configuration, dataset_json)
    params = sum(p.numel() for p in network.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, channels, *PlansManager(plans).get_configuration(configuration).patch_size))
    return network, params, counter.get_total_flops() / 1e9


def test_student_plan_equals_teacher_plan_in_every_preprocessing_key(planned):
    teacher, student = _plans(planned, "nnUNetPlans"), _plans(planned, "nnKDPlans_tiny")
    assert student["plans_name"] == "nnKDPlans_tiny" and student["nnkd"]["teacher_plans"] == "nnUNetPlans"
    for key in set(teacher) - {"plans_name", "experiment_planner_used", "configurations"}:
        assert student[key] == teacher[key], key
    assert student["configurations"].keys() == teacher["configurations"].keys()
    for name, config in teacher["configurations"].items():
        s = student["configurations"][name]
        assert set(s) - STUDENT_ONLY_KEYS == set(config) - STUDENT_ONLY_KEYS
        for key in set(config) - STUDENT_ONLY_KEYS:
            assert s[key] == config[key], (name, key)
        assert s["architecture"]["network_class_name"] == config["architecture"]["network_class_name"]


def test_measured_params_and_gflops_are_within_budget_and_recorded(planned):
    teacher, student = _plans(planned, "nnUNetPlans"), _plans(planned, "nnKDPlans_tiny")
    dataset_json = json.loads((planned["preprocessed"] / "dataset.json").read_text())
    for name in student["configurations"]:
        if "architecture" not in student["configurations"][name]:
            continue
        _, t_params, t_gflops = _instantiate(teacher, name, dataset_json)
        _, s_params, s_gflops = _instantiate(student, name, dataset_json)
        print(f"{name}: params {s_params}/{t_params} = {s_params / t_params:.3f}, "
              f"GFLOPs {s_gflops:.3f}/{t_gflops:.3f} = {s_gflops / t_gflops:.3f}")
        assert s_params <= t_params * PRESETS["tiny"] and s_gflops <= t_gflops * PRESETS["tiny"]
        record = student["configurations"][name][STUDENT_KEY]
        assert record["params"] == s_params and record["teacher_params"] == t_params
        assert record["gflops_per_patch"] == pytest.approx(s_gflops, abs=1e-4)
        assert record["teacher_gflops_per_patch"] == pytest.approx(t_gflops, abs=1e-4)
        assert record["budget"] == "tiny" and record["teacher_plans"] == "nnUNetPlans"


def test_cli_prints_teacher_vs_student_table_with_ratios(planned):
    lines = planned["stdout"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    assert "teacher params" in lines[header] and "ratio" in lines[header]
    row = next(line for line in lines[header:] if line.startswith("3d_fullres"))
    ratios = [float(x) for x in row.split()[3:7:3]]  # parameter ratio, GFLOPs ratio
    assert all(0 < r <= 1 / 16 for r in ratios)


def test_student_is_a_stock_network_nnunet_trains_on_the_teacher_data(planned, monkeypatch):
    """nnU-Net's own trainer takes the student plans and finds the already preprocessed data."""
    from nnunetv2.run.run_training import get_trainer_from_args

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, planned["env"][name])
    trainer = get_trainer_from_args(str(PLANNED_ID), "3d_fullres", 0, "nnUNetTrainer", "nnKDPlans_tiny",
                                    device=torch.device("cpu"))
    trainer.initialize()
    assert type(trainer.network).__name__ == "PlainConvUNet"
    dataset_train, _ = trainer.get_tr_and_val_datasets()
    data, _, _, _ = dataset_train.load_case(dataset_train.identifiers[0])
    patch = trainer.configuration_manager.patch_size
    x = torch.zeros(1, data.shape[0], *patch)
    crop = tuple(slice(0, min(p, s)) for p, s in zip(patch, data.shape[1:]))
    x[(0, slice(None), *crop)] = torch.from_numpy(data[(slice(None), *crop)])
    with torch.no_grad():
        out = trainer.network(x)
    assert out[0].shape == (1, len(trainer.dataset_json["labels"]), *patch)


def test_planning_is_deterministic_and_never_touches_raw(planned):
    env = planned["env"]
    plans_file = planned["preprocessed"] / "nnKDPlans_tiny.json"
    first = plans_file.read_bytes()
    plans_file.unlink()
    result = run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "-c", "3d_fullres", "--budget", "tiny",
                     "-np", "1", env=env)
    assert plans_file.read_bytes() == first
    assert "already preprocessed" in result.stdout  # second run reuses nnU-Net's preprocessed data
    assert tree_digest(Path(env["nnUNet_raw"])) == planned["raw_before"]


def test_larger_presets_give_larger_students(planned):
    planner_params = {}
    for preset in ("tiny", "small", "medium"):
        planner = nnKDStudentPlanner(planned["preprocessed"], Budget(preset=preset))
        _, configurations = planner.plan()
        for c in configurations:
            assert c.student.cost.params <= c.param_limit and c.student.cost.gflops <= c.gflop_limit
            assert c.param_limit == pytest.approx(c.teacher.params * PRESETS[preset])
        planner_params[preset] = {c.name: c.student.cost.params for c in configurations}
    for name in planner_params["tiny"]:
        assert planner_params["tiny"][name] < planner_params["small"][name] < planner_params["medium"][name]


def test_absolute_budgets_and_the_chosen_student_is_the_widest_that_fits(planned):
    teacher = _plans(planned, "nnUNetPlans")["configurations"]["3d_fullres"]
    search = StudentSearch(teacher["architecture"], 1, 4, teacher["patch_size"])
    for max_params, max_gflops in ((150_000, float("inf")), (float("inf"), 0.5), (400_000, 1.0)):
        student = search.search(max_params, max_gflops)
        assert student.cost.params <= max_params and student.cost.gflops <= max_gflops
        # one step wider at the same depth and cap no longer fits
        cap = student.max_width / (max(search.teacher_widths) * student.base_width / search.teacher_widths[0])
        fraction = min((1.0, 0.5, 0.25), key=lambda f: abs(f - cap))
        wider = search._candidate(student.base_width + 2, fraction, max(student.encoder_depth),
                                  max(student.decoder_depth))
        assert search._fits(wider, max_params, max_gflops) is None


def test_resenc_teacher_plans_give_a_resenc_student(planned):
    env = planned["env"]
    run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "-c", "3d_fullres", "--budget", "small",
            "--teacher-plans", "nnUNetResEncUNetMPlans", "--no_pp", env=env)
    teacher = _plans(planned, "nnUNetResEncUNetMPlans")
    student = _plans(planned, "nnKDPlans_small-nnUNetResEncUNetMPlans")
    t_arch = teacher["configurations"]["3d_fullres"]["architecture"]
    s_arch = student["configurations"]["3d_fullres"]["architecture"]
    assert s_arch["network_class_name"].endswith("ResidualEncoderUNet")
    assert all(s <= t for s, t in zip(s_arch["arch_kwargs"]["n_blocks_per_stage"],
                                      t_arch["arch_kwargs"]["n_blocks_per_stage"]))
    record = student["configurations"]["3d_fullres"][STUDENT_KEY]
    assert record["param_ratio"] <= 1 / 6 and record["gflop_ratio"] <= 1 / 6
    assert student["configurations"]["3d_fullres"]["data_identifier"] == \
        teacher["configurations"]["3d_fullres"]["data_identifier"]
