"""The benchmark scripts' reports: the numbers docs/benchmarks.md quotes are computed, not typed."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def label_free_result(timing: bool = True) -> dict:
    teacher = {"spec": "deepbet?size=192,192,192", "params": 2_000_000, "gflops_per_case": 20.0,
               "test_dice_vs_bet": [0.94, 0.92]}
    runs = []
    for student, gflops, seconds in (("2d:P2", 8.0, 0.5), ("3d_fullres:P3", 2.0, 0.25)):
        for labels in ("bet", "deepbet"):
            for seed, dice in enumerate((0.95, 0.96, 0.97)):
                run = {"student": student, "labels": labels, "seed": seed, "params": 200_000,
                       "gflops_per_case": gflops, "test_dice_vs_bet": [dice, dice],
                       "test_dice_vs_deepbet": [dice - 0.01, dice - 0.01], "validation_dice_own_labels": dice}
                if timing:
                    run["seconds_per_case"] = seconds
                runs.append(run)
    if timing:
        teacher["seconds_per_case"] = 1.0
    return {"teacher": teacher, "runs": runs, "test_cases": ["a", "b"]}


@pytest.mark.parametrize("timing", [True, False])
def test_colin27_label_free_report_and_plot(tmp_path, timing):
    module = load("colin27_label_free")
    result = json.loads(json.dumps(label_free_result(timing)))
    text = module.report(result)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 4  # one row per (student, labels), seeds pooled
    three_d_deepbet = next(r for r in rows if "3d_fullres:P3" in r and "deepbet's masks only" in r)
    cells = [c.strip() for c in three_d_deepbet.strip("|").split("|")]
    assert cells[4] == "10.0"  # 20 / 2 GFLOPs: the 10x target is read off the table
    assert cells[6] == "0.9500 ± 0.0100"  # Dice vs deepbet: mean ± std over the seeds
    if timing:
        assert cells[-1] == "4.0"  # 1.0 s / 0.25 s
    else:
        assert "faster" not in text
    module.plot(result, tmp_path / "dice_vs_cost.png")
    assert (tmp_path / "dice_vs_cost.png").stat().st_size > 10_000


def fake_run(runs: Path, name: str, method: str, seed: int, dice: float, lesion_curve: list[float]) -> None:
    """A finished run in nnkd_benchmark's layout: teacher.json, nnU-Net's validation summary and a checkpoint
    holding only nnU-Net's logging (what runs_report.py reads)."""
    import torch

    fold = runs / name / "Dataset990_Synthetic" / f"nnKDTrainer_X@s{seed}__P__3d_fullres" / "fold_0"
    (fold / "validation").mkdir(parents=True)
    (fold / "teacher.json").write_text(json.dumps({"method": method, "seed": seed, "hyperparameters": {},
                                                   "schedule": {"num_epochs": len(lesion_curve)}}))
    per_class = {"1": 0.9, "2": dice, "3": dice}
    summary = {"foreground_mean": {"Dice": sum(per_class.values()) / 3},
               "mean": {c: {"Dice": v, "FP": 10 * seed + int(c), "FN": 7.4} for c, v in per_class.items()}}
    (fold / "validation" / "summary.json").write_text(json.dumps(summary))
    torch.save({"logging": {"dice_per_class_or_region": [[0.9, v, v] for v in lesion_curve]}},
               fold / "checkpoint_final.pth")


def test_deploy_latency_pools_its_rounds_and_names_each_fast_path_choice(tmp_path):
    """deploy_latency.py --rounds: every model × runtime is measured once per round, side by side; a row's
    figures pool all rounds' runs, keep each round's median, and say what the fast path chose in each."""
    from argparse import Namespace

    module = load("deploy_latency")

    def one_round(totals, chosen=None):
        steps = {"read": 0.1, "preprocess": 0.2, "network": 0.0, "resample": 0.1, "write": 0.1}
        runs = [{"total": t, "seconds": {**steps, "network": t - 0.5}} for t in totals]
        return {"runs": runs, "patches": 4, "original_shape": [10, 20, 20], "preprocessed_shape": [10, 20, 20],
                **({"fast_path": {"runtime": chosen}} if chosen else {})}

    teacher = module.summarize([one_round([10.0, 12.0]), one_round([11.0, 15.0])], mirroring=False)
    assert teacher["seconds_per_case"] == 11.5 and teacher["seconds_per_case_min"] == 10.0
    assert teacher["seconds_per_case_each_round"] == [11.0, 13.0] and teacher["runs"] == 4
    assert teacher["steps"]["network"] == 11.0 and teacher["network_seconds_per_patch"] == 2.75
    fast = module.summarize([one_round([2.0], "onnxruntime"), one_round([3.0], "torch"),
                             one_round([2.5], "onnxruntime")], mirroring=False)
    assert fast["fast_path_each_round"] == ["onnxruntime", "torch", "onnxruntime"]
    assert module.runtime_label({"runtime": "fast", **fast}) == "nnkd_predict fast path (onnxruntime ×2, torch ×1)"
    record = {"machine": {"cpu": "a CPU", "processor": "", "machine": "x86_64", "cpus": 2, "torch_threads": 2,
                          "torch": "2", "onnxruntime": "1"},
              "models": {"teacher": {"params": 2e6, "gflops_per_patch": 16.0},
                         "tiny": {"params": 1e5, "gflops_per_patch": 1.0}},
              "measurements": {"teacher/fast/off": teacher, "tiny/fast/off": fast}}
    module.report(Namespace(case="ct", rounds=3, out=tmp_path), record)
    (row,) = [r for r in json.loads((tmp_path / "results.json").read_text())["rows"] if r["model"] == "tiny"]
    assert row["speedup_same_runtime"] == round(11.5 / 2.5, 2) and row["gflops_ratio"] == 16.0
    assert "3 rounds of every model × runtime side by side" in (tmp_path / "report.md").read_text()


def test_runs_report_pairs_each_run_with_no_kd_of_its_own_budget(tmp_path):
    """Two budgets with different seeds finished (a study part-way): every run is compared with the no-KD run
    of its budget and seed, and 'found at' comes from its own budget's seeds."""
    runs = tmp_path / "runs"
    fake_run(runs, "tiny-none-s0", "none", 0, 0.0, [0.0, 0.0, 0.0])
    fake_run(runs, "tiny-none-s1", "none", 1, 0.0, [0.0, 0.0, 0.0])
    fake_run(runs, "tiny-logit-cached-s0", "logit", 0, 0.9, [0.0, 0.6, 0.9])
    fake_run(runs, "tiny-logit-cached-s1", "logit", 1, 0.8, [0.0, 0.0, 0.7])
    fake_run(runs, "small-none-s0", "none", 0, 0.5, [0.0, 0.0, 0.6])
    fake_run(runs, "small-logit-cached-s0", "logit", 0, 0.9, [0.7, 0.9, 0.9])
    (runs / "small-logit-cached-s1").mkdir()  # started, not finished: left out
    module = load("runs_report")
    import sys

    argv, sys.argv = sys.argv, ["runs_report.py", str(runs), "-o", str(tmp_path / "out"), "--iterations", "10"]
    try:
        module.main()
    finally:
        sys.argv = argv
    rows = [line.split(" | ") for line in (tmp_path / "out" / "report.md").read_text().splitlines()[2:]
            if line.startswith("| ")]
    found = {(r[0].strip("| "), r[1], r[2]): r for r in rows}
    assert len(found) == 6
    assert found[("tiny", "logit (cached)", "1")][7] == "+0.533"  # (0.9 + 0.8 + 0.8) / 3 − 0.9 / 3
    assert found[("small", "logit (cached)", "0")][7] == "+0.267"
    assert found[("small", "none", "0")][9] == "30" and found[("tiny", "logit (cached)", "0")][9] == "20"
    assert found[("tiny", "none", "1")][9] == "never"
    assert found[("tiny", "none", "1")][11:14] == ["11 / 7", "12 / 7", "13 / 7 |"]  # nnU-Net's FP / FN per case
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 1000


def test_ensemble_stretch_scores_classes_and_reports_the_gap_to_the_ensemble():
    module = load("ensemble_stretch")
    reference = np.zeros((4, 4, 4), dtype=np.uint8)
    reference[:2] = 1
    reference[0, 0, 0] = 2
    predicted = reference.copy()
    predicted[1] = 0  # half the organ missed
    scores = module.class_dice(predicted, reference, [1, 2, 3])
    assert scores == pytest.approx({"1": 2 * 15 / (15 + 31), "2": 1.0})  # label 3 absent from both: left out

    def entry(dices, gflops):
        return {"dice_per_case": {"a": {"1": dices[0], "2": dices[1]}, "b": {"1": dices[0]}}, "gflops_per_case": gflops}

    result = {"labels": [1, 2], "label_names": ["organ", "lesion"], "test_cases": ["a", "b"], "folds": ["0", "1"],
              "teacher": {"params": 5e6, "ensemble_mirrored": entry((0.98, 0.96), 800.0),
                          "fold0_mirrored": entry((0.97, 0.96), 400.0), "fold0_plain": entry((0.96, 0.95), 50.0)},
              "students": [entry((0.97, 0.95), 4.0) | {"run": f"tiny-logit-cached-s{s}", "group": "tiny logit (cached)",
                                                       "seed": s, "params": 3e5} for s in (0, 1)]}
    # per case: a = mean(0.97, 0.95) = 0.96, b = 0.97 -> 0.965; the ensemble: (0.97 + 0.98) / 2 = 0.975
    assert module.mean_dice(result["students"][0]) == pytest.approx(0.965)
    text = module.report(result)
    assert "| tiny-logit-cached-s0 | 0.300 M | off | 0.9650 | 0.9700 | 0.9500 | -1.00 | 4.00 | 200 |" in text
    assert "| tiny logit (cached) | 2 | 0.9650 ± 0.0000 | -1.00, -1.00 |" in text
    assert "postprocessed" not in text
    for entry_ in (result["teacher"]["ensemble_mirrored"], result["students"][0]):  # postprocessing: +1 point
        entry_["dice_per_case_postprocessed"] = {c: {k: v + 0.01 for k, v in d.items()}
                                                 for c, d in entry_["dice_per_case"].items()}
    result["students"][1]["dice_per_case_postprocessed"] = result["students"][1]["dice_per_case"]
    for key in ("fold0_mirrored", "fold0_plain"):
        result["teacher"][key]["dice_per_case_postprocessed"] = result["teacher"][key]["dice_per_case"]
    text = module.report(result)
    assert "| tiny-logit-cached-s0 | 0.300 M | off | 0.9650 | 0.9700 | 0.9500 | -1.00 | 4.00 | 200 | 0.9750 | -1.00 |" \
        in text
    assert "| tiny-logit-cached-s1 | 0.300 M | off | 0.9650 | 0.9700 | 0.9500 | -1.00 | 4.00 | 200 | 0.9650 | -2.00 |" \
        in text
    assert "| tiny logit (cached) | 2 | 0.9700 ± 0.0071 | -1.00, -2.00 |" in text  # the postprocessed summary


def test_false_positives_finds_false_voxels_on_a_look_alike_neighbour_and_the_model_s_belief_there():
    module = load("false_positives")
    reference = np.zeros((1, 6, 12), dtype=np.uint8)
    reference[0, :, :4] = 1  # the organ
    image = np.where(reference == 1, 100.0, 0.0)
    image[0, :, 8:] = 100.0  # an unlabelled neighbour with the organ's intensity, 4 voxels away
    predicted = reference.copy()
    predicted[0, :2, 8:] = 1  # 8 false organ voxels on the neighbour
    predicted[0, 0, 4] = 1  # one touching the organ
    probability = np.where(predicted == 1, 0.9, 0.05)
    out = module.where_false(predicted, probability, reference, image, 1)
    assert out["false_positives"] == 9 and out["false_positives_by_label"] == {"0": 9}
    assert out["lookalike_voxels"] == 24 and out["false_positives_on_lookalikes"] == 8
    assert out["probability_on_lookalikes"] == pytest.approx((8 * 0.9 + 16 * 0.05) / 24)
    assert out["median_distance"] == pytest.approx(6.0)  # 1, then columns 8-11 of two rows: 5, 5, 6, 6, 7, 7, 8, 8
    summary = module.summarise({"a": out, "b": out | {"median_distance": None}})
    assert summary["median_distance"] == pytest.approx(6.0) and summary["false_positives"] == 9
    result = {"class_name": "organ", "fold": "0", "cases": ["a", "b"],
              "models": [{"name": "teacher", "summary": summary}]}
    assert "| teacher | 9 | 8 | 6.0 | 24 | 0.333 |" in module.report(result)


def test_teacher_precision_compares_a_teachers_bf16_pass_with_float32(teacher, tmp_path):
    import subprocess
    import sys

    from conftest import PLANNED_ID

    out = tmp_path / "precision.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "teacher_precision.py"), "--teacher",
                             teacher["spec"], "-d", str(PLANNED_ID), "--cases", "2", "--repeats", "1", "-o", str(out)],
                            env=teacher["env"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert len(record["cases"]) == 2 and record["batch"] == 2 and record["speedup"] > 0
    for case in record["cases"]:
        assert 0.95 < case["argmax_agreement"] <= 1 and 0 <= case["kl"] < 1e-2
        assert case["feature_relative_error"] and max(case["feature_relative_error"]) < 0.05
    assert record["worst"]["argmax_agreement"] == min(c["argmax_agreement"] for c in record["cases"])
    assert "argmax agreement" in result.stdout


def test_synthetic_study_trains_its_teacher_where_its_benchmarks_look_for_it(nnunet_env, tmp_path):
    """The study trains the teacher with a seed, so nnkd_train files it under a run name; the study must look
    there (it once looked in the unnamed folder and stopped after the teacher had trained)."""
    import subprocess
    import sys

    module = load("synthetic_study")
    command = [sys.executable, str(ROOT / "benchmarks" / "synthetic_study.py"), "-o", str(tmp_path / "out"),
               "--cases", "8", "--shape", "32", "32", "32", "--teacher-epochs", "1", "--teacher-iterations", "2",
               "-np", "1", "--teacher-only"]
    env = nnunet_env
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    folder = module.teacher_folder(Path(env["nnUNet_results"]), "Dataset990_Synthetic")
    assert "@s0__" in folder.name and (folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert "training the teacher" in first.stdout and f"teacher: {folder}" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "training the teacher" not in again.stdout and f"teacher: {folder}" in again.stdout


def test_study_time_splits_a_study_into_its_steps_from_the_runs_own_files(tmp_path):
    import os
    from datetime import datetime

    def stamp(minute: float) -> float:
        return datetime(2026, 12, 4, 10, 0).timestamp() + minute * 60

    def fold(folder: Path, start: float, end: float, summary: bool = True, pause: tuple = ()) -> Path:
        folder.mkdir(parents=True)
        # a line a minute, as nnU-Net writes one every epoch; none during a pause (killed or stopped)
        times = [t for t in range(int(start), int(end), 60) if not (pause and pause[0] < t < pause[1])] + [end]
        lines = [f"{datetime.fromtimestamp(t).strftime('%Y-%m-%d %H:%M:%S.%f')}: epoch line" for t in times]
        (folder / "training_log_x.txt").write_text("\nnnU-Net banner\n" + "\n".join(lines) + "\n")
        if summary:
            (folder / "validation").mkdir()
            (folder / "validation" / "summary.json").write_text("{}")
            os.utime(folder / "validation" / "summary.json", (end, end))
        return folder

    def run(benchmark: str, name: str, start: float, end: float, summary: bool = True, pause: tuple = ()) -> None:
        fold(tmp_path / "study" / benchmark / "runs" / name / "Dataset990_S" / "T__P__3d_fullres" / "fold_0",
             stamp(start), stamp(end), summary, tuple(stamp(t) for t in pause))

    teacher = fold(tmp_path / "teacher" / "fold_0", stamp(-20), stamp(0))
    run("labeled4", "tiny-none-s0", 2, 7)  # 2 minutes of planning and caching before the runs
    run("labeled4", "tiny-none-s1", 3, 9)
    run("labeled4", "tiny-logit-cached-s0", 7, 10)
    (tmp_path / "study" / "labeled4" / "results.json").write_text("{}")
    os.utime(tmp_path / "study" / "labeled4" / "results.json", (stamp(11), stamp(11)))  # 1 minute of measuring
    run("all_labels", "small-drd-s0", 12, 42)
    run("all_labels", "small-drd-s1", 13, 40)
    run("all_labels", "small-none-s0", 40, 41, summary=False)  # unfinished: left out, the benchmark too
    module = load("study_time")
    times = module.study_times(tmp_path / "study", teacher, None)
    assert times["teacher_minutes"] == pytest.approx(20)
    first, second = times["benchmarks"]
    assert first["name"] == "labeled4" and second["name"] == "all_labels"
    assert first["before_runs_minutes"] == pytest.approx(2) and first["runs_minutes"] == pytest.approx(8)
    assert first["after_runs_minutes"] == pytest.approx(1) and first["finished"]
    assert first["groups"]["tiny-none"] == {"runs": 2, "min": pytest.approx(5), "median": pytest.approx(5.5),
                                            "max": pytest.approx(6), "sum": pytest.approx(11),
                                            "interrupted": 0, "interrupted_active_sum": 0}
    assert second["before_runs_minutes"] == pytest.approx(1) and second["runs_minutes"] == pytest.approx(30)
    assert not second["finished"] and second["after_runs_minutes"] is None and len(second["runs"]) == 2
    assert times["benchmark_minutes"] == pytest.approx(2 + 8 + 1 + 1 + 30)
    text = module.markdown(times, wall=45 * 60)
    assert "| all_labels: small-drd | 2 | 27.0 / 28.5 / 30.0 | 57.0 | |" in text
    assert "**62.0** (1.03 h)" in text and "not finished" in text and "| 45.0 |" in text

    # the study stopped from minute 50 to 80 (a pause, or killed and resumed): both runs going then say so,
    # and the runs step and the per-run statistics leave the silence out
    run("all_labels", "small-none-s1", 42, 90, pause=(50, 80))
    run("all_labels", "small-none-s2", 43, 88, pause=(50, 80))
    run("all_labels", "small-none-s3", 90, 95)
    later = module.study_times(tmp_path / "study", teacher, None)["benchmarks"][1]
    assert later["runs_minutes"] == pytest.approx(95 - 12 - 30, abs=1)
    assert later["paused_minutes"] == pytest.approx(30, abs=1)
    interrupted = {r["run"]: r for r in later["runs"] if r["interrupted"]}
    assert set(interrupted) == {"small-none-s1", "small-none-s2"}
    assert interrupted["small-none-s1"]["active_minutes"] == pytest.approx(48 - 30, abs=1)
    assert later["groups"]["small-none"]["runs"] == 1 and later["groups"]["small-none"]["interrupted"] == 2
    assert later["groups"]["small-none"]["median"] == pytest.approx(5)
    text = module.markdown({**times, "benchmarks": [first, later]}, wall=None)
    assert "(+ 2 interrupted:" in text and "paused, left out" in text
    only = module.study_times(tmp_path / "study", None, stamp(11.5), only=["all_labels"])
    assert [b["name"] for b in only["benchmarks"]] == ["all_labels"]
    assert only["benchmarks"][0]["before_runs_minutes"] == pytest.approx(0.5)
    stopped = fold(tmp_path / "stopped" / "fold_0", stamp(-60), stamp(0), pause=(stamp(-50), stamp(-20)))
    assert module.study_times(tmp_path / "study", stopped, None)["teacher_minutes"] == pytest.approx(30, abs=1)
    with pytest.raises(SystemExit, match="no benchmark"):
        module.study_times(tmp_path / "study", None, None, only=["nothing"])


def test_predict_bf16_compares_a_trained_students_bf16_labels_with_float32(deployed_student, tmp_path):
    import subprocess
    import sys

    env = {**deployed_student["env"], "nnkd_cpu_bf16": "1"}  # bf16 on any CPU (emulated where it is not native)
    raw = Path(env["nnUNet_raw"]) / "Dataset991_Synthetic"
    model = f"logit|{env['nnUNet_results']}|-d 991 -c 3d_fullres --budget tiny --method logit -f 0 -npp 1 -nps 1"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict_bf16.py"), "-i", str(raw / "imagesTs"),
                             "--labels", str(raw / "labelsTs"), "-o", str(tmp_path), "--model", model,
                             "--disable_tta"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads((tmp_path / "results.json").read_text())
    (row,) = record["rows"]
    assert record["classes"] == [1, 2, 3] and record["mirroring"] is False
    # the fixture's student is trained a few iterations: its logits nearly tie in many voxels, so bf16 flips ~1 % of
    # the labels (0.990 in one CI run, with per-class Dice within 0.001); a broken bf16 path differs by far more
    assert row["label_agreement"] > 0.95 and row["bf16"]["runtime"] == "torch bf16"
    assert row["float32"]["runtime"] == "torch"
    for precision in ("float32", "bf16"):
        assert set(row[precision]["dice_per_class"]) == {"1", "2", "3"}
        assert all(0 <= v <= 1 for v in row[precision]["dice_per_class"].values())
        assert row[precision]["network_seconds_per_case"] > 0
    assert all(abs(row["bf16"]["dice_per_class"][c] - row["float32"]["dice_per_class"][c]) < 0.02 for c in "123")
    assert "| logit |" in (tmp_path / "report.md").read_text()


def test_network_step_times_each_plans_network_alone_and_names_its_largest_ops(planned, tmp_path, capsys,
                                                                              monkeypatch):
    module = load("network_step")
    monkeypatch.setenv("nnUNet_preprocessed", planned["env"]["nnUNet_preprocessed"])
    out = tmp_path / "step.json"
    assert module.main(["-d", planned["preprocessed"].name, "--repeats", "1", "--no-compile", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    teacher, tiny = result["rows"]
    assert (teacher["plans"], tiny["plans"]) == ("nnUNetPlans", "nnKDPlans_tiny")
    assert tiny["params"] < teacher["params"] and tiny["gflops_per_patch"] < teacher["gflops_per_patch"]
    for row in (teacher, tiny):
        assert row["eager_s"] > 0 and row["channels_last_s"] > 0 and "compiled_s" not in row
        assert 0 < sum(row["ops"].values()) <= 1 + 1e-9 and any("conv" in op for op in row["ops"])
    assert "| nnKDPlans_tiny |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the plans loader's error line, before anything is measured
        module.main(["-d", planned["preprocessed"].name, "-p", "nnUNetPlans,nnKDPlans_missing"])
    assert "nnKDPlans_missing.json not found" in capsys.readouterr().err
