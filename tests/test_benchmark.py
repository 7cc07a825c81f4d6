"""nnkd_benchmark --quick: every field of results.json, the report and its plots; a rerun skips finished runs
and repeats no measurement; a rerun with another schedule is refused instead of reusing them."""

import json
import shutil

from conftest import PLANNED_ID, run_cli

RUN_FIELDS = {"run", "budget", "method", "cached", "plans", "dice", "dice_per_class", "parameters", "gflops_per_patch",
              "param_ratio", "seconds_per_case_torch", "seconds_per_case_onnx", "speedup_torch", "speedup_onnx",
              "seconds_per_iteration", "step_vs_none", "peak_memory_mb", "dice_vs_none", "dice_vs_teacher"}


def test_quick_benchmark_reports_every_measure_and_resumes(planned, teacher, tmp_path):
    """The quick schedule on the session's planned dataset, with a copy of its nnU-Net teacher (the copy keeps
    the teacher cache the benchmark makes apart from the other tests'), instead of planning another synthetic
    dataset and training another teacher."""
    copy = tmp_path / teacher["folder"].name
    shutil.copytree(teacher["folder"], copy)
    out = tmp_path / "bench"
    args = ["--quick", "-d", PLANNED_ID, "--teacher", f"nnunet:{copy}", "--methods", "none,logit", "--budgets",
            "tiny", "-np", "1", "-o", out]
    run_cli("nnkd_benchmark", *args, env=planned["env"])
    results = json.loads((out / "results.json").read_text())
    assert results["schedule"] == {"epochs": 1, "iterations_per_epoch": 2}  # --quick
    teacher = results["teacher"]
    assert teacher["parameters"] > 0 and 0 <= teacher["dice"] <= 1
    assert teacher["seconds_per_case_torch"] > 0 and teacher["seconds_per_case_onnx"] > 0
    runs = {r["run"]: r for r in results["runs"]}
    assert set(runs) == {"tiny-none", "tiny-logit", "tiny-logit-cached"}
    for run in runs.values():
        assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
        assert 0 <= run["dice"] <= 1 and run["peak_memory_mb"] > 0 and run["seconds_per_iteration"] > 0
        assert run["parameters"] < teacher["parameters"] and run["speedup_torch"] > 0
    assert runs["tiny-none"]["step_vs_none"] == 1.0
    report = (out / "report.md").read_text()
    assert "| tiny | logit (cached) |" in report and "## Dice per class" in report
    for plot in ("dice_vs_params.png", "dice_vs_latency.png", "dice_per_method.png"):
        assert (out / plot).stat().st_size > 1000

    logs = {p: p.stat().st_mtime_ns for p in [*(out / "runs").glob("*/train.log"), out / "logs" / "cache.log"]}
    assert len(logs) == 4
    run_cli("nnkd_benchmark", *args, env=planned["env"])
    # nothing retrained or cached again, and every measurement (timings included) reused, not repeated
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    assert json.loads((out / "results.json").read_text()) == results

    changed = run_cli("nnkd_benchmark", *[a for a in args if a != "--quick"], "--epochs", 2, "--iterations", 2,
                      env=planned["env"], check=False)
    assert changed.returncode != 0 and "was trained with {'epochs': 1" in changed.stderr
    assert "'epochs': 2" in changed.stderr and "give another -o" in changed.stderr
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
