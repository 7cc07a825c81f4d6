"""nnkd_benchmark --quick: every field of results.json, the report and its plots; a rerun skips finished runs
and repeats no measurement; a rerun with another schedule is refused instead of reusing them."""

import json
import shutil
import statistics
from pathlib import Path

import pytest

from conftest import PLANNED_ID, run_cli, refuse_in_process

RUN_FIELDS = {"run", "budget", "method", "cached", "plans", "dice", "dice_per_class", "parameters", "gflops_per_patch",
              "param_ratio", "seconds_per_case_torch", "seconds_per_case_onnx", "speedup_torch", "speedup_onnx",
              "seconds_per_iteration", "step_vs_none", "peak_memory_mb", "dice_vs_none", "dice_vs_teacher", "seed",
              "versions", "learning_curve", "label", "variant"}


def test_quick_benchmark_reports_every_measure_and_resumes(planned, teacher, tmp_path):
    """The quick schedule on the session's planned dataset, with a copy of its nnU-Net teacher (the copy keeps
    the teacher cache the benchmark makes apart from the other tests'), instead of planning another synthetic
    dataset and training another teacher."""
    copy = tmp_path / teacher["folder"].name
    shutil.copytree(teacher["folder"], copy)
    out = tmp_path / "bench"
    args = ["--quick", "-d", PLANNED_ID, "--teacher", f"nnunet:{copy}", "--methods", "none,logit", "--budgets",
            "tiny", "--cached-only", "-np", "1", "-o", out]  # logit KD from the cache only: an online run differs
    # by one nnkd_train flag (its run list: test_methods_that_read_only_teacher_logits_also_run_from_the_cache)
    run_cli("nnkd_benchmark", *args, env=planned["env"])
    results = json.loads((out / "results.json").read_text())
    assert results["schedule"] == {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1}  # --quick
    assert results["seeds"] == 1 and results["labels"] == {"1": "organ", "2": "lesion", "3": "vessel"}
    teacher = results["teacher"]
    assert teacher["parameters"] > 0 and 0 <= teacher["dice"] <= 1
    assert teacher["seconds_per_case_torch"] > 0 and teacher["seconds_per_case_onnx"] > 0
    runs = {r["run"]: r for r in results["runs"]}
    assert set(runs) == {"tiny-none-s0", "tiny-logit-cached-s0"}
    for run in runs.values():
        assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
        assert 0 <= run["dice"] <= 1 and run["peak_memory_mb"] > 0 and run["seconds_per_iteration"] > 0
        assert run["parameters"] < teacher["parameters"] and run["speedup_torch"] > 0
        assert run["seed"] == 0 and run["versions"]["nnunetv2"] and run["versions"]["torch"]
        assert run["learning_curve"]["iterations"] == [2] and len(run["learning_curve"]["pseudo_dice_per_class"][0]) == 3
    assert runs["tiny-none-s0"]["step_vs_none"] == 1.0
    summary = {row["label"]: row for row in results["summary"]}
    assert set(summary) == {"none", "logit (cached)"} and summary["none"]["dice"]["n"] == 1
    report = (out / "report.md").read_text()
    assert "| tiny | logit (cached) |" in report and "## Dice per class" in report
    assert "## Mean over seeds" in report
    for plot in ("dice_vs_params.png", "dice_vs_latency.png", "dice_per_method.png", "learning_curves.png"):
        assert (out / plot).stat().st_size > 1000

    logs = {p: p.stat().st_mtime_ns for p in [*(out / "runs").glob("*/train.log"), out / "logs" / "cache.log"]}
    assert len(logs) == 3
    run_cli("nnkd_benchmark", *args, env=planned["env"])
    # nothing retrained or cached again, and every measurement (timings included) reused, not repeated
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    assert json.loads((out / "results.json").read_text()) == results

    folders = sorted(p.name for p in (out / "runs").iterdir())
    changed = refuse_in_process("nnkd_benchmark", *[a for a in args if a != "--quick"], "--epochs", 2,
                                "--iterations-per-epoch", 2, env=planned["env"])
    assert changed.returncode != 0 and "was trained with {'epochs': 1" in changed.stderr
    assert "'epochs': 2" in changed.stderr and "give another -o" in changed.stderr
    # refused before anything is planned, cached or trained: no run of the new seeds was started
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    assert sorted(p.name for p in (out / "runs").iterdir()) == folders

    # --int8: every model also quantized (nnkd_export's calibration) and measured in ONNX Runtime int8, with its
    # own Dice; nothing retrained, and the runtimes measured before are kept, not timed again
    before = results
    run_cli("nnkd_benchmark", *args, "--int8", env=planned["env"])
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    results = json.loads((out / "results.json").read_text())
    for model, earlier in zip([results["teacher"], *results["runs"]], [before["teacher"], *before["runs"]]):
        assert model["seconds_per_case_int8"] > 0 and 0 <= model["dice_int8"] <= 1
        for runtime in ("torch", "onnx"):
            assert model[f"seconds_per_case_{runtime}"] == earlier[f"seconds_per_case_{runtime}"]
        assert 0 <= model["dice_onnx"] <= 1 and set(model["dice_per_class_int8"]) == {"1", "2", "3"}
        assert abs(model["dice_onnx"] - model["dice"]) < 0.02  # the same network in ONNX Runtime fp32
    assert all(r["speedup_int8"] > 0 for r in results["runs"])
    assert "## Runtimes" in (out / "report.md").read_text() and "| teacher |" in (out / "report.md").read_text()
    assert (out / "dice_vs_latency.png").stat().st_size > 1000
    bad = refuse_in_process("nnkd_benchmark", *args[:-1], tmp_path / "never", "--int8", "--no-onnx", env=planned["env"])
    assert bad.returncode != 0 and "--no-onnx turns ONNX off" in bad.stderr and not (tmp_path / "never").exists()
    bad = refuse_in_process("nnkd_benchmark", *args[:-1], tmp_path / "never", "--jobs", 0, env=planned["env"])
    assert bad.returncode != 0 and "--jobs 0" in bad.stderr and not (tmp_path / "never").exists()

    # a second seed: only its runs train, seed 0's are reused; --jobs 2
    # trains the two new runs at once
    more = run_cli("nnkd_benchmark", *args, "--seeds", 2, "--no-onnx", "--jobs", 2,
                   env=planned["env"])
    assert more.returncode == 0 and json.loads((out / "results.json").read_text())["jobs"] == 2
    kept = out / "runs" / "tiny-none-s0" / "train.log"
    assert kept.stat().st_mtime_ns == logs[kept]
    results = json.loads((out / "results.json").read_text())
    assert {r["run"] for r in results["runs"]} == {"tiny-none-s0", "tiny-none-s1", "tiny-logit-cached-s0",
                                                 "tiny-logit-cached-s1"}
    summary = {row["label"]: row for row in results["summary"]}
    assert set(summary) == {"none", "logit (cached)"}
    cached = summary["logit (cached)"]
    assert cached["seeds"] == [0, 1] and cached["dice"]["n"] == 2 and cached["dice_vs_none"]["n"] == 2
    low, high = cached["dice_vs_none"]["ci95"]
    assert low <= cached["dice_vs_none"]["mean"] <= high and cached["dice"]["std"] is not None
    record = json.loads((out / "runs" / "tiny-logit-cached-s1" / "run.json").read_text())
    assert record["seed"] == 1 and record["settings"]["seed"] == 1
    fold = Path(record["fold_folder"])
    assert json.loads((fold / "teacher.json").read_text())["seed"] == 1

    # trained but not recorded (the benchmark killed in between): adopted as it is; stopped part-way: resumed
    runs_dir = out / "runs"
    adopted_log = runs_dir / "tiny-none-s1" / "train.log"
    adopted_time = adopted_log.stat().st_mtime_ns
    (runs_dir / "tiny-none-s1" / "run.json").unlink()
    (runs_dir / "tiny-logit-cached-s1" / "run.json").unlink()
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")  # as if stopped before its validation
    shutil.rmtree(fold / "validation")
    run_cli("nnkd_benchmark", *args, "--seeds", 2, "--no-onnx", env=planned["env"])
    assert adopted_log.stat().st_mtime_ns == adopted_time
    records = {r["run"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert records["tiny-none-s1"]["peak_memory_mb"] is None and records["tiny-none-s0"]["peak_memory_mb"] > 0
    resumed = runs_dir / "tiny-logit-cached-s1" / "train_resumed.log"
    assert resumed.is_file() and (fold / "validation" / "summary.json").is_file()
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").is_file()

    bad = refuse_in_process("nnkd_benchmark", *args, "--methods", "none,logit?kd_loss=hinton", env=planned["env"])
    assert bad.returncode != 0 and "kd_loss 'hinton' is unknown" in bad.stderr
    bad = refuse_in_process("nnkd_benchmark", *args, "--methods", "none,logit?kd_temp=1", env=planned["env"])
    assert bad.returncode != 0 and "has no hyper-parameter 'kd_temp'" in bad.stderr


def test_method_variants_name_their_runs():
    from nnkd.benchmark.runs import Run, parse_method

    method, hp = parse_method("logit?kd_loss=kl+dice&kd_temperature=1")
    assert (method, hp) == ("logit", (("kd_loss", "kl+dice"), ("kd_temperature", "1")))
    run = Run("tiny", method, cached=True, seed=2, hp=hp)
    assert run.name == "tiny-logit@kd_loss=kl+dice,kd_temperature=1-cached-s2"
    assert run.label == "logit?kd_loss=kl+dice&kd_temperature=1 (cached)" and run.variant.startswith("logit?")
    assert Run("small", "none").name == "small-none-s0" and parse_method("none") == ("none", ())
    for named in (run, Run("small", "none"), Run("tiny", "feature", seed=11, hp=(("feature_loss", "cosine"),))):
        assert Run.from_name(named.name) == named  # a run folder's name gives back its run


def test_methods_that_read_only_teacher_logits_also_run_from_the_cache():
    """logit, and tskd without its feature term, get a cached run (the only one with --cached-only); methods that
    read teacher features never do."""
    from nnkd.benchmark.study import BenchmarkRequest, _runs

    request = BenchmarkRequest(output=Path("out"), methods=("none", "logit", "tskd", "tskd?feature_weight=0", "cka"),
                               budgets=("tiny",), seeds=1, cached_only=True)
    assert [r.name for r in _runs(request, True)] == [
        "tiny-none-s0", "tiny-logit-cached-s0", "tiny-tskd-s0", "tiny-tskd@feature_weight=0-cached-s0", "tiny-cka-s0"]
    request.cached_only = False
    assert "tiny-tskd@feature_weight=0-s0" in [r.name for r in _runs(request, True)]


def test_runs_start_costliest_first_so_no_lane_ends_alone_on_a_long_run():
    """--jobs starts the runs with a live teacher and the larger student first (the full study's order, seed by
    seed, left its last DRD run training alone); equal costs keep the order of _runs."""
    from nnkd.benchmark.study import BenchmarkRequest, _runs, longest_first

    request = BenchmarkRequest(output=Path("out"), methods=("none", "logit", "feature", "drd"),
                               budgets=("tiny", "small"), seeds=2, cached_only=True)
    runs = _runs(request, True)
    info = {"tiny": {"gflops_per_patch": 2.3, "teacher_gflops_per_patch": 46.3},
            "small": {"gflops_per_patch": 7.47, "teacher_gflops_per_patch": 46.3}}
    assert [r.name for r in longest_first(runs, info)] == [
        "small-feature-s0", "small-drd-s0", "small-feature-s1", "small-drd-s1",
        "tiny-feature-s0", "tiny-drd-s0", "tiny-feature-s1", "tiny-drd-s1",
        "small-none-s0", "small-logit-cached-s0", "small-none-s1", "small-logit-cached-s1",
        "tiny-none-s0", "tiny-logit-cached-s0", "tiny-none-s1", "tiny-logit-cached-s1"]
    assert longest_first(runs, {}) == runs  # plans without nnkd's cost entry: the order of _runs


def test_train_runs_reads_the_costs_from_the_student_plans_and_keeps_the_records_in_order(tmp_path, monkeypatch):
    import torch

    from nnkd.benchmark import study

    folder = tmp_path / "Dataset990_Synthetic"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1}}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    for budget, gflops in (("tiny", 2.3), ("small", 7.47)):
        plans = {"configurations": {"3d_fullres": {"nnkd_student": {"gflops_per_patch": gflops,
                                                                    "teacher_gflops_per_patch": 46.3}}}}
        (folder / f"nnKDPlans_{budget}.json").write_text(json.dumps(plans))
    started = []

    def train(run, plans, request, dataset_name, env, output):
        started.append(run.name)
        return {"run": run.name, "plans": plans}

    monkeypatch.setattr(study, "train", train)
    request = study.BenchmarkRequest(output=tmp_path, methods=("none", "drd"), budgets=("tiny", "small"), seeds=1)
    runs = study._runs(request, True)
    records = study._train_runs(runs, {"tiny": "nnKDPlans_tiny", "small": "nnKDPlans_small"}, request,
                                folder.name, {"nnUNet_preprocessed": str(tmp_path)}, tmp_path, torch.device("cpu"))
    assert started == ["small-drd-s0", "tiny-drd-s0", "small-none-s0", "tiny-none-s0"]
    assert [r["run"] for r in records] == [r.name for r in runs] == ["tiny-none-s0", "tiny-drd-s0", "small-none-s0",
                                                                       "small-drd-s0"]
    assert records[0]["plans"] == "nnKDPlans_tiny"


def test_seed_summary_pairs_each_run_with_the_no_kd_run_of_its_seed():
    from scipy.stats import t

    from nnkd.benchmark.stats import derived_ratios, found_at, summarize

    def run(method, seed, dice, lesion_curve):
        return {"run": f"tiny-{method}-s{seed}", "label": method, "variant": method, "budget": "tiny",
                "method": method, "cached": False, "seed": seed, "dice": dice, "seconds_per_iteration": 1.0,
                "dice_per_class": {"1": dice, "2": dice / 2},
                "learning_curve": {"iterations": [10, 20, 30], "pseudo_dice_per_class": [[0.9, v] for v in lesion_curve]}}

    runs = [run("none", 0, 0.50, [0.0, 0.1, 0.6]), run("none", 1, 0.60, [0.0, 0.0, 0.2]),
            run("none", 2, 0.70, [0.0, 0.0, 0.0]),
            run("logit", 0, 0.60, [0.5, 0.9, 0.9]), run("logit", 1, 0.75, [0.6, 0.9, 0.9]),
            run("logit", 2, 0.80, [0.0, 0.7, 0.9])]
    rows = {r["label"]: r for r in summarize(derived_ratios(runs, {"dice": 0.9, "parameters": 10}))}
    kd = rows["logit"]
    assert kd["seeds"] == [0, 1, 2] and kd["dice"]["mean"] == pytest.approx(0.7167, abs=1e-4)
    differences = [0.10, 0.15, 0.10]  # paired by seed, not mean minus mean
    assert kd["dice_vs_none"]["mean"] == pytest.approx(sum(differences) / 3)
    half = t.ppf(0.975, 2) * statistics.stdev(differences) / 3 ** 0.5
    assert kd["dice_vs_none"]["ci95"] == pytest.approx([sum(differences) / 3 - half, sum(differences) / 3 + half])
    assert kd["dice_vs_none_per_class"]["2"]["mean"] == pytest.approx(sum(differences) / 6)  # per class, paired
    assert kd["dice_vs_none_per_class"]["1"]["ci95"] == pytest.approx(kd["dice_vs_none"]["ci95"])
    assert kd["found_at"]["2"] == {"per_seed": [10, 10, 20], "median": 10}
    assert rows["none"]["found_at"]["2"]["per_seed"] == [30, None, None]
    assert rows["none"]["found_at"]["2"]["median"] is None  # most seeds never found it
    assert found_at(runs[0]["learning_curve"], 0) == 10
    # KD as an accelerator: no KD's final level is the mean of classes and seeds at its last epoch
    level = (0.9 + (0.6 + 0.2 + 0.0) / 3) / 2
    assert rows["none"]["reaches_no_kd_final"]["level"] == pytest.approx(level)
    assert rows["none"]["reaches_no_kd_final"]["iteration"] == 30
    assert kd["reaches_no_kd_final"]["iteration"] == 10 and kd["reaches_no_kd_final"]["iterations"] == 30
    from nnkd.benchmark.report import summary_lines

    lines = summary_lines({"summary": list(rows.values()), "schedule": {"epochs": 3, "iterations_per_epoch": 10}})
    assert "| tiny | logit | 0.900 | 0.583 | 10 | 33% |" in lines


def test_a_run_stopped_during_its_final_validation_is_validated_not_retrained(tmp_path, monkeypatch):
    """nnU-Net removes checkpoint_latest.pth once checkpoint_final.pth is written: a benchmark killed during the
    final validation must resume that run validating only (nnkd_train --val), not start it again (which nnkd_train
    refuses) nor train it on. The run's TrainRequest reaches its training process as JSON, intact."""
    from types import SimpleNamespace

    from nnkd.benchmark import runs

    fold = tmp_path / "out" / "runs" / "tiny-none-s0" / "Dataset990_Synthetic" / "T__P__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"")
    requests = []

    def fake_train(request, env, log):
        requests.append(runs.TrainRequest.from_json(json.loads(json.dumps(request.to_json()))))
        (fold / "validation").mkdir()
        (fold / "validation" / "summary.json").write_text(json.dumps(
            {"foreground_mean": {"Dice": 0.9}, "mean": {"1": {"Dice": 0.9}}}))
        return 1.0

    monkeypatch.setattr(runs, "fold_folder", lambda *a: fold)
    monkeypatch.setattr(runs, "started_as_asked", lambda *a: True)
    monkeypatch.setattr(runs, "train_in_process", fake_train)
    monkeypatch.setattr(runs, "seconds_per_iteration", lambda *a: 0.1)
    monkeypatch.setattr(runs, "learning_curve", lambda *a: {})
    request = SimpleNamespace(num_epochs=2, num_iterations_per_epoch=2, labeled=None, teacher=None, extra_teachers=[],
                              seed=0, num_val_iterations_per_epoch=1, configuration="3d_fullres", fold=0, device="cpu",
                              schedule={"num_epochs": 2, "num_iterations_per_epoch": 2})
    record = runs.train(runs.Run("tiny", "none", seed=0), "P", request, "Dataset990_Synthetic", {}, tmp_path / "out")
    assert len(requests) == 1 and requests[0].validation_only and not requests[0].continue_training
    assert requests[0] == runs.TrainRequest(dataset="Dataset990_Synthetic", configuration="3d_fullres", fold="0",
                                            plans="P", method="none", seed=0, device="cpu", validation_only=True,
                                            num_epochs=2, num_iterations_per_epoch=2)
    assert record["dice"] == 0.9


def test_a_benchmark_without_a_teacher_is_refused_before_anything_is_written(nnunet_env, tmp_path):
    """Only --quick trains a teacher of its own; otherwise no -o is made, nothing is planned."""
    result = refuse_in_process("nnkd_benchmark", "-d", "990", "-o", tmp_path / "out", env=nnunet_env)
    assert result.returncode != 0 and "no teacher given" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not any(Path(nnunet_env["nnUNet_preprocessed"]).iterdir())


def test_a_rerun_measures_only_the_runtimes_it_has_not_measured_and_a_new_model_everything(tmp_path):
    from nnkd.benchmark.study import _measured

    calls = []

    def measure(runtimes):
        calls.append(runtimes)
        return {f"seconds_per_case_{r}": 1.0 + len(calls) for r in runtimes}

    def evaluate(new):
        return {f"dice{'' if r == 'torch' else '_' + r}": 0.5 for r in ("torch", "onnx", "int8")
                if f"seconds_per_case_{r}" in new}

    done = tmp_path / "measure.json"
    first = _measured(done, {"sha": "a"}, ("torch", "onnx"), measure, evaluate)
    assert calls == [("torch", "onnx")] and first["seconds_per_case_int8"] is None and first["dice_onnx"] == 0.5
    assert _measured(done, {"sha": "a"}, ("torch", "onnx"), measure, evaluate) == first and len(calls) == 1
    more = _measured(done, {"sha": "a"}, ("torch", "onnx", "int8"), measure, evaluate)  # --int8 added
    assert calls[-1] == ("int8",) and more["seconds_per_case_int8"] == 3.0 and more["dice_int8"] == 0.5
    assert more["seconds_per_case_torch"] == first["seconds_per_case_torch"]
    fewer = _measured(done, {"sha": "a"}, ("torch",), measure, evaluate)  # --no-onnx: reported as asked
    assert len(calls) == 2 and fewer["seconds_per_case_onnx"] is None and "dice_onnx" not in fewer
    retrained = _measured(done, {"sha": "b"}, ("torch",), measure, evaluate)  # another checkpoint: all again
    assert calls[-1] == ("torch",) and retrained["seconds_per_case_torch"] == 4.0
