"""nnkd_benchmark --quick: every field of results.json, the report and its plots; a rerun skips finished runs."""

import json

from conftest import run_cli

RUN_FIELDS = {"run", "budget", "method", "cached", "plans", "dice", "dice_per_class", "parameters", "gflops_per_patch",
              "param_ratio", "seconds_per_case_torch", "seconds_per_case_onnx", "speedup_torch", "speedup_onnx",
              "seconds_per_iteration", "step_vs_none", "peak_memory_mb", "dice_vs_none", "dice_vs_teacher"}


def test_quick_benchmark_reports_every_measure_and_resumes(nnunet_env, tmp_path):
    out = tmp_path / "bench"
    args = ["--quick", "--methods", "none,logit", "--budgets", "tiny", "-np", "1", "-o", out]
    run_cli("nnkd_benchmark", *args, env=nnunet_env)
    results = json.loads((out / "results.json").read_text())
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

    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/train.log")}
    assert len(logs) == 3
    run_cli("nnkd_benchmark", *args, env=nnunet_env)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/train.log")} == logs  # nothing retrained
