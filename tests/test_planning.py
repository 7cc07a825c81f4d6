import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import PLANNED_ID, run_cli, tree_digest
from nnkd.errors import NnkdError
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


def test_absolute_limits_that_would_not_shrink_the_teacher_are_refused_by_the_planner(planned):
    # the planner's own check, which also covers a dataset whose teacher plans the same command has just made
    teacher = {c.name: c.teacher for c in nnKDStudentPlanner(planned["preprocessed"], Budget(preset="tiny")).plan()[1]}
    at_teacher = Budget(max_params=teacher["3d_fullres"].params)
    with pytest.raises(NnkdError, match="the student would be the teacher"):
        nnKDStudentPlanner(planned["preprocessed"], at_teacher).plan(required=["3d_fullres"])
    # a limit the teacher exceeds in one of the two is a real budget
    below = Budget(max_params=10**20, max_gflops=teacher["3d_fullres"].gflops / 4)
    _, configurations = nnKDStudentPlanner(planned["preprocessed"], below).plan(required=["3d_fullres"])
    assert configurations[0].student.cost.gflops <= teacher["3d_fullres"].gflops / 4
    # a configuration nobody asked for is left out with a note rather than planned as the teacher
    small, large = sorted(("2d", "3d_fullres"), key=lambda name: teacher[name].params)
    assert teacher[small].params < teacher[large].params
    between = Budget(max_params=(teacher[small].params + teacher[large].params) // 2)
    _, configurations = nnKDStudentPlanner(planned["preprocessed"], between).plan(required=[large])
    assert [c.name for c in configurations] == [large]
    with pytest.raises(NnkdError, match=f"configuration {small}: .*the student would be the teacher"):
        nnKDStudentPlanner(planned["preprocessed"], between).plan(required=[small])


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


def test_a_parameter_limit_alone_says_that_it_does_not_bound_speed():
    from nnkd.planners.architecture_search import StudentArchitecture
    from nnkd.planners.budget import Budget
    from nnkd.planners.network_cost import NetworkCost
    from nnkd.planners.plan_and_preprocess import speed_note
    from nnkd.planners.student_planner import PlannedConfiguration

    student = StudentArchitecture({}, NetworkCost(2_000_000, 42.5), 8, 64, (2,), (1,))
    planned = [PlannedConfiguration("3d_fullres", NetworkCost(20_000_000, 39.5), student, 2e6, float("inf"))]
    note = speed_note(Budget(max_params=2_000_000), planned)
    assert "not its speed" in note and "42.50 of the teacher's 39.50 (1.08×)" in note and "--max-gflops" in note
    assert speed_note(Budget(max_params=2_000_000, max_gflops=5), planned) is None
    assert speed_note(Budget(preset="tiny"), planned) is None


def _fake_latency(calls):
    """A stand-in for the measured latency that grows with GFLOPs (2 ms per GFLOP), so the search is tested
    without timing anything."""
    from nnkd.planners.network_cost import measure

    def latency(architecture, channels, classes, patch, device, runtime):
        calls.append(json.dumps(architecture, sort_keys=True))
        return measure(architecture, channels, classes, patch).gflops * 2.0
    return latency


def test_a_latency_budget_plans_the_largest_student_that_fits_and_a_smaller_one_for_less(planned, tmp_path,
                                                                                          monkeypatch):
    for name in ("nnUNetPlans.json", "dataset.json"):
        (tmp_path / name).write_bytes((planned["preprocessed"] / name).read_bytes())
    calls = []
    monkeypatch.setattr("nnkd.planners.latency.measure_patch_latency", _fake_latency(calls))
    chosen = {}
    for ms in (4.0, 1.0):
        planner = nnKDStudentPlanner(tmp_path, Budget(max_latency_ms=ms))
        plans, configurations = planner.plan(required=["3d_fullres"])
        record = plans["configurations"]["3d_fullres"][STUDENT_KEY]
        (configuration,) = [c for c in configurations if c.name == "3d_fullres"]
        assert record["latency_ms"] == pytest.approx(configuration.student.cost.gflops * 2.0, rel=1e-3)
        assert record["latency_ms"] <= ms and record["max_latency_ms"] == ms
        assert record["latency"]["device"] == "cpu" and record["latency"]["runtime"] == "fast"  # as nnkd_predict
        assert record["latency"]["torch_threads"] >= 1 and record["latency"]["candidates_measured"] >= 1
        chosen[ms] = configuration.student.cost.gflops
        # the widest of its shape within the budget: no family of finer steps from the plan (its stages after the
        # first k one base width wider, for every k) has a member that would fit
        teacher = _plans(planned, "nnUNetPlans")["configurations"]["3d_fullres"]
        search = StudentSearch(teacher["architecture"], 1, 4, teacher["patch_size"])
        widths = configuration.student.architecture["arch_kwargs"]["features_per_stage"]
        unlimited = float("inf")
        families = [search.widened(configuration.student, unlimited, unlimited, k) for k in range(len(widths) - 1)]
        assert families[0] and all(not wider or wider[0].cost.gflops * 2.0 > ms for wider in families)
        for k, wider in enumerate(families):
            assert [c.cost.gflops for c in wider] == sorted(c.cost.gflops for c in wider)
            for candidate in wider:  # CPU-friendly widths, never narrower than the plan's, its first k kept
                wider_widths = candidate.architecture["arch_kwargs"]["features_per_stage"]
                assert all(w % 8 == 0 or w < 8 for w in wider_widths) and wider_widths != widths
                assert all(w >= v for w, v in zip(wider_widths, widths)) and wider_widths[:k] == widths[:k]
                assert candidate.encoder_depth == configuration.student.encoder_depth
        (confirmed,) = record["latency"]["confirmations"]  # the winner, measured again outside the cache
        assert confirmed["again_ms"] == confirmed["search_ms"] == record["latency_ms"]
    assert chosen[1.0] < chosen[4.0]
    assert (tmp_path / "nnkd_latency.json").is_file()
    measured = len(calls)
    again, _ = nnKDStudentPlanner(tmp_path, Budget(max_latency_ms=1.0)).plan(required=["3d_fullres"])
    winners = [c for c in again["configurations"].values() if STUDENT_KEY in c and "latency" in c[STUDENT_KEY]]
    assert winners and all(len(c[STUDENT_KEY]["latency"]["confirmations"]) == 1 for c in winners)
    assert len(calls) == measured + len(winners)  # every search latency came from the cache; each winner measured again

    with pytest.raises(NnkdError, match="no student architecture runs a patch within 0.0001 ms"):
        nnKDStudentPlanner(tmp_path, Budget(max_latency_ms=0.0001)).plan(required=["3d_fullres"])


def test_a_latency_plan_measures_its_winner_again_and_steps_back_when_it_no_longer_fits(planned, tmp_path,
                                                                                      monkeypatch):
    """The search keeps the largest of many measured candidates, the one whose measurement came out lowest: a
    second measurement of each architecture 10 % slower than the first (fake) sends the plan back to a candidate
    that fits in both, and the plan records the second measurement."""
    for name in ("nnUNetPlans.json", "dataset.json"):
        (tmp_path / name).write_bytes((planned["preprocessed"] / name).read_bytes())
    calls = []
    first = _fake_latency(calls)

    def slower_the_second_time(architecture, *rest):
        ms = first(architecture, *rest)
        return ms * 1.1 if calls.count(calls[-1]) > 1 else ms

    monkeypatch.setattr("nnkd.planners.latency.measure_patch_latency", slower_the_second_time)
    plans, configurations = nnKDStudentPlanner(tmp_path, Budget(max_latency_ms=4.0)).plan(required=["3d_fullres"])
    record = plans["configurations"]["3d_fullres"][STUDENT_KEY]
    (configuration,) = [c for c in configurations if c.name == "3d_fullres"]
    confirmations = record["latency"]["confirmations"]
    assert len(confirmations) >= 2 and all(c["search_ms"] <= 4.0 for c in confirmations)
    assert all(c["again_ms"] > 4.0 for c in confirmations[:-1]) and confirmations[-1]["again_ms"] <= 4.0
    assert [c["params"] for c in confirmations[1:]] == sorted((c["params"] for c in confirmations[1:]), reverse=True)
    assert record["latency_ms"] == confirmations[-1]["again_ms"] <= 4.0
    assert record["latency_ms"] == pytest.approx(configuration.student.cost.gflops * 2.2, rel=1e-3)

    def too_slow_the_second_time(architecture, *rest):
        first(architecture, *rest)
        return 99.0 if calls.count(calls[-1]) > 1 else 1.0

    (tmp_path / "nnkd_latency.json").unlink()
    calls.clear()  # every candidate fits in its first measurement, none in its second
    monkeypatch.setattr("nnkd.planners.latency.measure_patch_latency", too_slow_the_second_time)
    with pytest.raises(NnkdError, match="within 5 ms on this machine .* when measured again"):
        nnKDStudentPlanner(tmp_path, Budget(max_latency_ms=5.0)).plan(required=["3d_fullres"])


def test_the_cli_plans_to_a_latency_and_refuses_one_no_architecture_meets(planned, tmp_path):
    """Real measurements on this machine (no timing is asserted): the plans record what was measured (on the fast
    path, the default); a budget no architecture meets writes nothing (measured in torch alone: the search goes
    down to its smallest candidate, timing each on the way)."""
    import shutil

    env = {**planned["env"], "nnUNet_preprocessed": str(tmp_path)}
    shutil.copytree(planned["preprocessed"], tmp_path / planned["preprocessed"].name)
    before = tree_digest(tmp_path)
    refused = run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "-c", "3d_fullres", "--max-latency", "0.001",
                      "--latency-runtime", "torch", "--no_pp", env=env, check=False)
    assert refused.returncode != 0 and "no student architecture runs a patch within 0.001 ms" in refused.stderr
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.endswith("nnkd_latency.json")} == before
    run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "-c", "3d_fullres", "--max-latency", "1000", "--no_pp",
            env=env)
    plans = json.loads((tmp_path / planned["preprocessed"].name / "nnKDPlans_latency1000ms-fast.json").read_text())
    record = plans["configurations"]["3d_fullres"][STUDENT_KEY]
    assert 0 < record["latency_ms"] <= 1000 and plans["nnkd"]["budget"]["max_latency_ms"] == 1000
    assert record["latency"]["runtime"] == "fast" and "fast path" in record["latency"]["what"]


@pytest.mark.parametrize("runtime", ["torch", "onnx", "fast"])
def test_a_patch_latency_is_measured_in_each_runtime(planned, runtime):
    from nnkd.planners.latency import measure_patch_latency

    teacher = _plans(planned, "nnUNetPlans")["configurations"]["3d_fullres"]
    student = StudentSearch(teacher["architecture"], 1, 4, teacher["patch_size"]).search(100_000, float("inf"))
    assert measure_patch_latency(student.architecture, 1, 4, teacher["patch_size"], "cpu", runtime) > 0


def test_fraction_budgets_allow_one_nth_of_the_teacher_and_name_their_plans(planned):
    budget = Budget(preset="1/64")
    assert budget.name == "frac64" and Budget.from_name("frac64") == Budget.from_name("1/64") == budget
    assert Budget(preset="frac64") == budget and budget.to_json()["fraction_of_teacher"] == 1 / 64
    assert Budget(preset="1/16").name == "frac16" != Budget(preset="tiny").name  # tiny's plans keep their name
    for bad in ("1/1", "1/0", "2/3", "1/x", "frac1"):
        with pytest.raises(NnkdError, match="unknown budget"):
            Budget(preset=bad)
    planner = nnKDStudentPlanner(planned["preprocessed"], budget)
    for c in planner.plan()[1]:
        assert c.param_limit == pytest.approx(c.teacher.params / 64)
        assert c.student.cost.params <= c.param_limit and c.student.cost.gflops <= c.gflop_limit


def test_a_fast_latency_is_the_fastest_way_nnkd_predict_may_run_the_patch(planned, monkeypatch):
    """--latency-runtime fast (the default on the CPU) times the patch in each of the fast path's ways and keeps
    the fastest, leaving out a conversion that fails or whose logits differ from the stock network's, as
    nnkd_predict does (fake timings: nothing is timed)."""
    import nnkd.network_runtimes as runtimes
    from nnkd.planners import latency

    fake_ms = {runtimes.TORCH: 5.0, runtimes.ONEDNN: 3.0, runtimes.CHANNELS_LAST: 4.0, runtimes.ONNXRUNTIME: 2.0}
    broken, differs, calls, timed = set(), set(), [], []

    def candidate(network, name, channels, patch):
        if name in broken:
            raise RuntimeError("conversion failed")

        def run(x):
            calls.append(name)
            return network(x) + (1.0 if name in differs else 0.0)
        return run

    def median_ms(run, cuda=False):  # the stock network (torch) runs itself: it adds no call
        before = len(calls)
        run()
        timed.append(calls[-1] if len(calls) > before else runtimes.TORCH)
        return fake_ms[timed[-1]]

    monkeypatch.setattr(runtimes, "candidate", candidate)
    monkeypatch.setattr(latency, "_median_ms", median_ms)
    teacher = _plans(planned, "nnUNetPlans")["configurations"]["3d_fullres"]
    student = StudentSearch(teacher["architecture"], 1, 4, teacher["patch_size"]).search(100_000, float("inf"))
    args = (student.architecture, 1, 4, teacher["patch_size"], "cpu")
    assert latency.measure_patch_latency(*args, "fast") == 2.0 and set(timed) == set(runtimes.CANDIDATES)
    broken.add(runtimes.ONNXRUNTIME)
    assert latency.measure_patch_latency(*args, "fast") == 3.0
    differs.add(runtimes.ONEDNN)
    timed.clear()
    assert latency.measure_patch_latency(*args, "fast") == 4.0
    assert set(timed) == {runtimes.TORCH, runtimes.CHANNELS_LAST}
    with pytest.raises(NnkdError, match="CPU fast path"):
        latency.measure_patch_latency(*args[:-1], "cuda", "fast")


def test_latency_budget_names_round_trip():
    for budget in (Budget(max_latency_ms=50), Budget(max_params=10, max_latency_ms=12.5, latency_device="cuda",
                                                     latency_runtime="onnx"),
                   Budget(max_latency_ms=7, latency_runtime="torch"), Budget(max_latency_ms=9, latency_device="cuda")):
        assert Budget.from_name(budget.name) == budget
    # measured as nnkd_predict runs: its fast path on the CPU, torch on a GPU; plans made before "fast" keep torch
    assert Budget(max_latency_ms=50).name == "latency50ms-fast" and Budget(max_latency_ms=50).latency_runtime == "fast"
    assert Budget(max_latency_ms=9, latency_device="cuda").latency_runtime == "torch"
    assert Budget.from_name("latency50ms").latency_runtime == "torch"
    with pytest.raises(NnkdError, match="not positive"):
        Budget(max_latency_ms=0)
    with pytest.raises(NnkdError, match="CPU fast path"):
        Budget(max_latency_ms=5, latency_device="cuda", latency_runtime="fast")



def test_a_latency_measured_on_another_cpu_is_not_reused(monkeypatch):
    """Cloud machines may report only "AMD EPYC": the family / model numbers and the vector features (AVX-512,
    VNNI) tell two of them apart, and they are part of the latency cache's key and of the plans' record."""
    from nnkd.planners import latency

    zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n" \
           "flags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
    zen5 = zen3.replace("family\t: 25", "family\t: 26").replace("avx2 fma", "avx2 fma avx512f avx512_vnni avx_vnni")
    assert latency.cpu_identity(zen3) == {"cpu": "AMD EPYC, cpu family 25, model 1", "cpu_features": ["avx2", "fma"]}
    assert latency.cpu_identity(zen5)["cpu_features"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"]
    real = latency.cpu_identity
    keys = []
    for cpuinfo in (zen3, zen5, zen3):
        monkeypatch.setattr(latency, "cpu_identity", lambda text=cpuinfo: real(text))
        assert latency.machine()["cpu"] == real(cpuinfo)["cpu"]
        keys.append(latency.LatencyCache.key({"a": 1}, 1, 2, (8, 8, 8), "cpu", "torch"))
    assert keys[0] != keys[1] and keys[0] == keys[2]
    # measured as nnkd_predict runs: with its malloc setting (nnkd.devices.keep_freed_memory), recorded
    assert latency.machine()["keep_freed_memory"] is (__import__("sys").platform == "linux")


def test_the_search_counts_the_flops_flopcountermode_counts_in_2d_3d_and_resenc_networks(planned):
    """count_conv_gflops (the architecture search's fast count) against FlopCounterMode on the network nnU-Net builds:
    plain 3D and 2D teachers and a student, and a residual-encoder network (strided 1×1 skips, transposed convs)."""
    from nnkd.planners.network_cost import build_network, count_conv_gflops, count_gflops

    plans = _plans(planned, "nnUNetPlans")["configurations"]
    teacher_3d = plans["3d_fullres"]
    resenc = json.loads(json.dumps(teacher_3d["architecture"]))
    resenc["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = resenc["arch_kwargs"]
    kwargs["n_blocks_per_stage"] = [1, 2, 2, 2, 2][:len(kwargs.pop("n_conv_per_stage"))]
    cases = [(teacher_3d["architecture"], teacher_3d["patch_size"]), (resenc, teacher_3d["patch_size"]),
             (plans["2d"]["architecture"], plans["2d"]["patch_size"]),
             (StudentSearch(teacher_3d["architecture"], 1, 4, teacher_3d["patch_size"]).search(50_000, float("inf"))
              .architecture, teacher_3d["patch_size"])]
    for architecture, patch in cases:
        network = build_network(architecture, 1, 4)
        assert count_conv_gflops(network, 1, patch) == pytest.approx(count_gflops(network, 1, patch), rel=1e-12)
