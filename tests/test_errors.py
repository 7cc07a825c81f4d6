"""Bad input stops early with one `nnkd: error:` line, a non-zero exit and no traceback."""

import pytest

from conftest import PLANNED_ID, SMALL, run_cli, tree_digest


def _one_error_line(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnkd: error:"), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["-d", "123", "--budget", "tiny"], ["dataset 123 not found"]),
    (["-d", "abc", "--budget", "tiny"], ["not a dataset ID"]),
    (["-d", str(PLANNED_ID), "--budget", "huge"], ["invalid choice: 'huge'"]),
    (["-d", str(PLANNED_ID)], ["no budget given"]),
    (["-d", str(PLANNED_ID), "--budget", "tiny", "--max-params", "5"], ["both given"]),
    (["-d", str(PLANNED_ID), "--max-params", "0"], ["not positive"]),
    (["-d", str(PLANNED_ID), "--budget", "tiny", "-c", "4d_fullres"],
     ["unknown configuration 4d_fullres", "3d_fullres"]),
    (["-d", str(PLANNED_ID), "--max-params", "10", "-c", "3d_fullres"], ["no student architecture meets the budget",
                                                                         "smallest candidate"]),
    (["-d", str(PLANNED_ID), "--budget", "tiny", "--teacher-plans", "MyPlans"], ["MyPlans.json not found"]),
])
def test_plan_and_preprocess_bad_input(planned, args, fragments):
    raw_before = tree_digest(planned["preprocessed"])
    result = run_cli("nnkd_plan_and_preprocess", *args, "--no_pp", env=planned["env"], check=False)
    _one_error_line(result, *fragments)
    assert tree_digest(planned["preprocessed"]) == raw_before  # nothing written on failure


@pytest.mark.parametrize("unset", ["nnUNet_raw", "nnUNet_preprocessed"])
def test_nnunet_variables_unset(planned, unset):
    env = {k: v for k, v in planned["env"].items() if k != unset}
    result = run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "--budget", "tiny", env=env, check=False)
    _one_error_line(result, f"{unset} is not set")


def test_make_synthetic_without_nnunet_raw(nnunet_env):
    env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_raw"}
    _one_error_line(run_cli("nnkd_make_synthetic", "-d", 990, *SMALL, env=env, check=False), "nnUNet_raw is not set")


def test_verbose_shows_the_traceback(planned):
    result = run_cli("nnkd_plan_and_preprocess", "-d", "123", "--budget", "tiny", "--verbose",
                     env=planned["env"], check=False)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("nnkd: error:")
