"""The benchmark scripts' reports: the numbers docs/studies/ quotes are computed, not typed."""

import importlib.util
import json
from pathlib import Path

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
    figures pool all rounds' runs (nnkd.evaluation.case_latency), keep each round's median, and say what the fast
    path chose in each."""
    from argparse import Namespace

    from nnkd.evaluation.case_latency import pool_rounds
    from nnkd.evaluation.runtimes import runtime_label

    module = load("deploy_latency")

    def one_round(totals, chosen=None):
        steps = {"read": 0.1, "preprocess": 0.2, "network": 0.0, "resample": 0.1, "write": 0.1}
        runs = [{"total": t, "seconds": {**steps, "network": t - 0.5}} for t in totals]
        return {"runs": runs, "patches": 4, "original_shape": [10, 20, 20], "preprocessed_shape": [10, 20, 20],
                **({"fast_path": {"runtime": chosen}} if chosen else {})}

    teacher = pool_rounds([one_round([10.0, 12.0]), one_round([11.0, 15.0])], mirroring=False)
    assert teacher["seconds_per_case"] == 11.5 and teacher["seconds_per_case_min"] == 10.0
    assert teacher["seconds_per_case_each_round"] == [11.0, 13.0] and teacher["runs"] == 4
    assert teacher["steps"]["network"] == 11.0 and teacher["network_seconds_per_patch"] == 2.75
    fast = pool_rounds([one_round([2.0], "onnxruntime"), one_round([3.0], "torch"),
                             one_round([2.5], "onnxruntime")], mirroring=False)
    assert fast["fast_path_each_round"] == ["onnxruntime", "torch", "onnxruntime"]
    assert runtime_label({"runtime": "fast", **fast}) == "nnkd_predict fast path (onnxruntime ×2, torch ×1)"
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


STUDY_TEACHERS = {  # a study script with --teacher-only on a tiny dataset, and the dataset and configuration it plans
    "synthetic_study": (["--cases", "8", "--shape", "32", "32", "32", "--teacher-epochs", "1",
                         "--teacher-iterations", "2"], "Dataset990_Synthetic", "3d_fullres"),
    "frontier": (["-d", "980", "-c", "2d", "--preset", "default", "--dim", "2", "--shape", "32", "32", "--cases", "8",
                  "--test-cases", "2", "--teacher-epochs", "1", "--iterations", "2", "--val-iterations", "1"],
                 "Dataset980_Synthetic", "2d"),
}


@pytest.mark.parametrize("script", STUDY_TEACHERS)
def test_study_scripts_make_plan_and_train_their_teacher_where_their_benchmarks_look_for_it(nnunet_env, tmp_path,
                                                                                           script):
    """From empty nnU-Net folders, --teacher-only writes the dataset, plans it and trains the teacher (the frontier
    once skipped planning there, and its teacher found no plans); the teacher is trained with a seed, so nnkd_train
    files it under a run name, where the study must look (it once looked in the unnamed folder). A rerun trains
    nothing again."""
    import subprocess
    import sys

    from nnkd.benchmark.runs import study_teacher_folder

    options, dataset, configuration = STUDY_TEACHERS[script]
    command = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "-o", str(tmp_path / "out"), *options,
               "-np", "1", "--teacher-only"]
    first = subprocess.run(command, env=nnunet_env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    folder = study_teacher_folder(Path(nnunet_env["nnUNet_results"]), dataset, configuration)
    assert "@s0__" in folder.name and (folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert "training the teacher" in first.stdout and str(folder) in first.stdout
    assert (tmp_path / "out" / "logs" / "teacher.request.json").is_file()  # the request, not CLI arguments
    again = subprocess.run(command, env=nnunet_env, capture_output=True, text=True)
    assert again.returncode == 0 and "training the teacher" not in again.stdout and str(folder) in again.stdout


def test_search_report_counts_choices_within_d_on_test_and_ladder_steps_from_the_frontier(tmp_path, monkeypatch):
    """Issue 47's measured example is computed from the searches' distill.json files: a choice counts as within D
    by its test-case Dice against the teacher's, and its distance from the frontier's answer in ladder steps."""
    module = load("search_report")
    ladder = {"params5000": 5000, "params1250": 1250, "params312": 312}

    def search(seed: int, chosen: str, test_student: float, seconds: dict) -> Path:
        candidates = [{"budget": b, "parameters": p, "gflops_per_patch": p / 1e4, "latency_ms": None,
                       "epochs_trained": 8, "ema_pseudo_dice": 0.9, "dice": 0.95 if b == chosen else None,
                       "status": "within" if b == chosen else "not needed", "reason": "", "seconds": seconds[b]}
                      for b, p in ladder.items()]
        total = sum(seconds.values())
        record = {"dataset": "Dataset980_X", "configuration": "2d", "teacher": "nnunet:/t", "seed": seed,
                  "search": {"chosen": chosen, "teacher_dice": 0.96, "max_dice_loss": 1.0, "epochs": 8,
                             "iterations_per_epoch": 5, "search_seconds": total,
                             "cost_vs_chosen_alone": total / seconds[chosen], "candidates": candidates},
                  "test": {"cases": ["test_000"], "teacher_dice": 0.97, "student_dice": test_student}}
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "distill.json").write_text(json.dumps(record))
        return folder

    folders = [search(0, "params1250", 0.965, {"params5000": 10, "params1250": 40, "params312": 30}),
               search(1, "params312", 0.95, {"params5000": 10, "params1250": 10, "params312": 40}),
               search(2, "params5000", 0.969, {"params5000": 40, "params1250": 10, "params312": 10})]
    frontier = tmp_path / "frontier_x" / "results.json"
    frontier.parent.mkdir()
    frontier.write_text(json.dumps({"frontier": {"default_method": "logit (cached)", "smallest_within_points": {
        "1": {"logit (cached)": {"budget": "params1250", "parameters": 1250, "dice": 0.95}}}}}))
    out = tmp_path / "report"
    monkeypatch.setattr("sys.argv", ["search_report.py", "-o", str(out), "--frontier", str(frontier),
                                     "--machine", "test CPU", "--searches", *map(str, folders)])
    module.main()
    result = json.loads((out / "results.json").read_text())
    assert [r["within_on_test"] for r in result["seeds"]] == [True, False, True]  # 0.5, 2.0, 0.1 points below
    summary = result["summary"]
    assert summary["ladder"] == ["params5000", "params1250", "params312"] and summary["within_on_test"] == 2
    assert summary["frontiers"] == {"frontier_x": {"answer": "params1250", "steps": [0, 1, 1]}}
    assert summary["cost_vs_chosen_alone"] == {"mean": pytest.approx(5 / 3), "min": 1.5, "max": 2.0}  # 80/40, 60/40
    text = (out / "report.md").read_text()
    assert "2 of 3 seeds" in text and "| 1 | params312 | 312 |" in text and "+2.00 | no |" in text
