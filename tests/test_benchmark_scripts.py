"""The benchmark scripts' reports: the numbers docs/benchmarks.md quotes are computed, not typed."""

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
