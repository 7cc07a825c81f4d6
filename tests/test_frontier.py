"""The frontier study: the teacher-convergence check, the frontier's answers and its command's teacher gate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnkd.evaluation.convergence import plateau, training_curve
from nnkd.benchmark.frontier import frontier, write_frontier
from nnkd.benchmark.stats import derived_ratios, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_plateau_judges_the_last_quarter_of_an_ema_curve():
    rising = [0.1 * i for i in range(9)]
    assert not plateau(rising).converged and plateau(rising).gain == pytest.approx(0.2)
    flat = [0.5, 0.7, 0.8, 0.85, 0.86, 0.861, 0.8612, 0.8613, 0.8611]
    judged = plateau(flat)
    assert judged.converged and judged.window == 2 and judged.gain == pytest.approx(0.8613 - 0.8612)
    assert "0.2 points over the last 25% of the epochs" in judged.criterion
    assert not plateau(flat, min_gain=0.00005).converged  # a stricter criterion
    assert not plateau([0.9]).converged and not plateau([]).converged  # too short to judge
    with pytest.raises(ValueError):
        plateau(flat, share=1.0)


def test_training_curve_reads_nnunets_logged_ema_pseudo_dice(teacher):
    curve = training_curve(teacher["folder"] / "fold_0")
    assert len(curve["ema_fg_dice"]) == len(curve["mean_fg_dice"]) == len(curve["train_losses"]) >= 1
    with pytest.raises(FileNotFoundError):
        training_curve(teacher["folder"])


def _results() -> dict:
    """Two budgets × no KD / logit KD × 3 seeds; the teacher at 0.90."""
    dice = {("frac4", "none"): (0.89, 0.895, 0.885), ("frac4", "logit"): (0.893, 0.896, 0.888),
            ("frac64", "none"): (0.80, 0.82, 0.78), ("frac64", "logit"): (0.87, 0.885, 0.87)}
    params = {"frac4": 4000, "frac64": 250}
    runs = []
    for (budget, method), values in dice.items():
        for seed, value in enumerate(values):
            label = "logit (cached)" if method == "logit" else "none"
            runs.append({"budget": budget, "method": method, "label": label, "variant": method, "seed": seed,
                         "cached": method == "logit", "dice": value, "dice_per_class": {"1": value, "2": value - 0.1},
                         "parameters": params[budget], "gflops_per_patch": params[budget] / 1000,
                         "seconds_per_iteration": 1.0})
    teacher = {"dice": 0.90, "parameters": 16000, "gflops_per_patch": 16.0}
    runs = derived_ratios(runs, teacher)
    return {"runs": runs, "summary": summarize(runs)}, teacher


def test_frontier_answers_how_small_a_student_can_be_and_how_much_kd_closes(tmp_path):
    results, teacher = _results()
    answer = frontier(results, teacher)
    budgets = {b["budget"]: b for b in answer["budgets"]}
    assert budgets["frac64"]["has_gap"] and not budgets["frac4"]["has_gap"]
    assert budgets["frac64"]["no_kd_loss_points"] == pytest.approx(10.0)
    closes = budgets["frac64"]["best_kd_closes"]
    assert closes["share"] == pytest.approx(0.75) and closes["ci95"][0] < 0.75 < closes["ci95"][1]
    assert budgets["frac64"]["best"] == "logit (cached)" and all(b["default_within_best"] for b in answer["budgets"])
    within = answer["smallest_within_points"]
    assert within["1"]["none"]["budget"] == within["1"]["logit (cached)"]["budget"] == "frac4"
    assert within["1"]["size_ratio_default_vs_none"] == 1.0
    assert within["3"]["logit (cached)"]["budget"] == "frac64" and within["3"]["none"]["budget"] == "frac4"
    assert within["3"]["size_ratio_default_vs_none"] == 16.0  # the moonshot's measure
    row = next(r for r in answer["rows"] if r["budget"] == "frac64" and r["method"] == "logit")
    assert row["dice_vs_none_per_class"]["2"]["mean"] == pytest.approx(0.075)

    study = {"dataset": "Dataset980_MultiOrgan2D", "configuration": "2d", "fold": "0", "machine": "test CPU",
             "validation_cases": ["a", "b"], "labels": {"1": "liver", "2": "adrenal"}, "seeds": 3,
             "teacher": {**teacher, "spec": "nnunet:/t", "iterations": 6000, "seed": 0,
                         "plateau": plateau([0.5, 0.8, 0.9, 0.9]).to_json()},
             "students_schedule": {"epochs": 120, "iterations_per_epoch": 50, "iterations": 6000},
             "runs": results["runs"], "frontier": answer}
    write_frontier(study, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["teacher"]["iterations"] == 6000
    report = (tmp_path / "report.md").read_text()
    assert "trained 6,000 iterations" in report and "converged" in report and "| liver | adrenal |" in report
    assert "frac64: no KD 10.00 points below the teacher (a gap ≥ 3 points)" in report
    assert "| frac64 | 250 | 0.25 | logit (cached) | 0.875 ± 0.009 | -2.50 | +0.075 [" in report
    assert (tmp_path / "frontier_params.png").stat().st_size > 0 and (tmp_path / "frontier_gflops.png").is_file()


def test_the_frontier_command_stops_when_its_teacher_has_not_converged(nnunet_env, tmp_path):
    """One epoch is no converged teacher: the study trains it where nnkd_train files a seeded run, draws its
    curve, and stops before any student with one line saying what to do."""
    command = [sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "-o", str(tmp_path / "out"), "-d", "985",
               "--dim", "2", "--shape", "64", "64", "--cases", "6", "--test-cases", "2", "--teacher-epochs", "1",
               "--iterations", "2", "--val-iterations", "1", "-np", "1"]
    result = subprocess.run(command, env=nnunet_env, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "the teacher has not converged by the criterion; train it longer" in result.stderr
    folder = Path(nnunet_env["nnUNet_results"]) / "Dataset985_Synthetic" / "nnKDTrainer_NoKD@s0__nnUNetPlans__2d"
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file() and f"teacher: {folder}" in result.stdout
    assert (tmp_path / "out" / "teacher_curve.png").is_file() and not (tmp_path / "out" / "benchmark").exists()
    teacher = json.loads((tmp_path / "out" / "teacher.json").read_text())  # the verdict, written before stopping
    assert teacher["plateau"]["converged"] is False and teacher["iterations"] == 2 and teacher["seed"] == 0
    assert 0 <= teacher["validation_dice"] <= 1 and teacher["spec"] == f"nnunet:{folder}"
    dataset = json.loads((Path(nnunet_env["nnUNet_raw"]) / "Dataset985_Synthetic" / "dataset.json").read_text())
    assert dataset["nnkd_synthetic"]["preset"] == "multiorgan"
