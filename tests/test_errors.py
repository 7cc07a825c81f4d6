"""Bad input stops early with one `nnkd: error:` line, a non-zero exit and no traceback."""

import pytest

from conftest import PLANNED_ID, SMALL, selected_params, tree_digest, refuse_all_in_process, refuse_in_process


def _one_error_line(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnkd: error:"), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


BAD_PLANNING = {  # nnkd_plan_and_preprocess arguments (with --no_pp), fragments of the error line
    "unknown-dataset": (["-d", "123", "--budget", "tiny"], ["dataset 123 not found"]),
    "dataset-not-an-id": (["-d", "abc", "--budget", "tiny"], ["not a dataset ID"]),
    "unknown-budget": (["-d", str(PLANNED_ID), "--budget", "huge"], ["unknown budget 'huge'", "1/N"]),
    "no-budget": (["-d", str(PLANNED_ID)], ["no budget given"]),
    "budget-and-limit": (["-d", str(PLANNED_ID), "--budget", "tiny", "--max-params", "5"], ["both given"]),
    "limit-not-positive": (["-d", str(PLANNED_ID), "--max-params", "0"], ["not positive"]),
    "unknown-configuration": (["-d", str(PLANNED_ID), "--budget", "tiny", "-c", "4d_fullres"],
                              ["unknown configuration 4d_fullres", "3d_fullres"]),
    "budget-unreachable": (["-d", str(PLANNED_ID), "--max-params", "10", "-c", "3d_fullres"],
                           ["no student architecture meets the budget", "smallest candidate"]),
    "compute-below-floor": (["-d", str(PLANNED_ID), "--max-gflops", "0.0001", "-c", "3d_fullres"],
                            ["smallest candidate", "coarser spacing", "-overwrite_target_spacing", "--teacher-plans"]),
    "teacher-plans-missing": (["-d", str(PLANNED_ID), "--budget", "tiny", "--teacher-plans", "MyPlans"],
                              ["MyPlans.json not found"]),
}


@pytest.fixture(scope="module")
def refusals(request, planned) -> dict:
    """The command of every collected case below, run in this process (refuse_all_in_process) before any is
    checked; the preprocessed dataset is digested before and after them all. (group, case) -> result, and both
    digests."""
    calls = {}
    for case in selected_params(request, "test_plan_and_preprocess_bad_input", "case"):
        calls["plan", case] = [*BAD_PLANNING[case][0], "--no_pp"]
    for unset in selected_params(request, "test_nnunet_variables_unset", "unset"):
        calls["unset", unset] = ["-d", PLANNED_ID, "--budget", "tiny"]
    if selected_params(request, "test_verbose_shows_the_traceback"):
        calls["verbose", None] = ["-d", "123", "--budget", "tiny", "--verbose"]
    before = tree_digest(planned["preprocessed"])
    env = planned["env"]
    results = refuse_all_in_process([("nnkd_plan_and_preprocess", args,
                                      {k: v for k, v in env.items() if k != key[1]} if key[0] == "unset" else env)
                                     for key, args in calls.items()])
    return {"runs": dict(zip(calls, results)), "before": before, "after": tree_digest(planned["preprocessed"])}


@pytest.mark.parametrize("case", list(BAD_PLANNING))
def test_plan_and_preprocess_bad_input(case, refusals):
    _one_error_line(refusals["runs"]["plan", case], *BAD_PLANNING[case][1])
    assert refusals["after"] == refusals["before"]  # nothing written on failure


@pytest.mark.parametrize("unset", ["nnUNet_raw", "nnUNet_preprocessed"])
def test_nnunet_variables_unset(refusals, unset):
    _one_error_line(refusals["runs"]["unset", unset], f"{unset} is not set")


def test_make_synthetic_without_nnunet_raw(nnunet_env):
    env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_raw"}
    _one_error_line(refuse_in_process("nnkd_make_synthetic", "-d", 990, *SMALL, env=env), "nnUNet_raw is not set")


def test_verbose_shows_the_traceback(refusals):
    result = refusals["runs"]["verbose", None]
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("nnkd: error:")


def test_every_command_answers_version_without_its_required_arguments():
    """`nnkd_export --version` (and every other command's) prints the versions and exits 0, though the
    command's own arguments are missing; the CLI modules build their parsers in-process."""
    import contextlib
    import importlib
    import io
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module = importlib.import_module(target.split(":")[0])
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            module.build_parser().parse_args(["--version"])
        assert exit_.value.code in (0, None), name
        assert out.getvalue().startswith(f"{name} 0.") and "nnunetv2" in out.getvalue(), (name, out.getvalue())


def _parsers() -> dict:
    import importlib
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: importlib.import_module(target.split(":")[0]).build_parser() for name, target in scripts.items()}


def _options(parser) -> dict:
    return {option: action for action in parser._actions for option in action.option_strings}


def test_every_command_spells_the_same_thing_the_same_way():
    """-p is always the student plans and --teacher-plans the teacher's; --device defaults to auto; the
    sliding-window step is nnU-Net's -step_size; the schedule is --epochs/--iterations-per-epoch; LoRA is --lora-*."""
    from nnkd.cli._common import DeprecatedSpelling

    for name, parser in _parsers().items():
        options = {o: a for o, a in _options(parser).items() if not isinstance(a, DeprecatedSpelling)}
        if "-p" in options:
            assert "student plans" in options["-p"].help, name
        if "--teacher-plans" in options:
            assert "teacher" in options["--teacher-plans"].help, name
        if "--device" in options:
            assert options["--device"].default is None and "-device" in options, name
        assert "--step_size" not in options and "--iterations" not in options and "--rank" not in options, name
        assert "--val-iterations" not in options and "--alpha" not in options, name


@pytest.mark.parametrize("command, old, new, dest, value", [
    ("nnkd_cache_teacher", "-p", "--teacher-plans", "teacher_plans", "P"),
    ("nnkd_cache_teacher", "--step_size", "-step_size", "step_size", 0.25),
    ("nnkd_tune_teacher", "-p", "--teacher-plans", "plans", "P"),
    ("nnkd_synthesize", "-p", "--teacher-plans", "plans", "P"),
    ("nnkd_train_lorkd", "--rank", "--lora-rank", "rank", 2),
    ("nnkd_train_lorkd", "--alpha", "--lora-alpha", "alpha", 8.0),
    ("nnkd_benchmark", "--iterations", "--iterations-per-epoch", "iterations", 7),
    ("nnkd_benchmark", "--val-iterations", "--val-iterations-per-epoch", "val_iterations", 3),
])
def test_an_old_spelling_works_for_one_more_release_and_says_the_new_one(command, old, new, dest, value, capsys):
    parser = _parsers()[command]
    required = {"nnkd_cache_teacher": ["-d", "1", "-c", "2d", "-f", "0", "--teacher", "x"],
                "nnkd_tune_teacher": ["-d", "1", "-c", "2d", "-f", "0"],
                "nnkd_synthesize": ["-d", "1", "-n", "1"],
                "nnkd_train_lorkd": ["-d", "1", "2", "-c", "2d", "-f", "0"],
                "nnkd_benchmark": ["-o", "x"]}[command]
    args = parser.parse_args([*required, old, str(value)])
    assert getattr(args, dest) == value
    assert f"{old} is deprecated" in capsys.readouterr().err and new in _options(parser)
    default = parser.parse_args(required)
    assert getattr(default, dest) != value  # the new spelling's default stays when the old one is not given


def test_the_python_api_doc_names_only_what_exists():
    """Every `nnkd.x.y.Name` and every `Request(field=…)` in docs/python_api.md exists, so the doc cannot drift."""
    import dataclasses
    import importlib
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "python_api.md").read_text()
    names = set(re.findall(r"\bnnkd(?:\.\w+)+", text))
    assert len(names) > 15
    found = {}
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)  # AttributeError: the doc names something that does not exist
            found[parts[-1]] = obj
            break
    for request, fields in re.findall(r"\b(\w+Request|StudentRef)\(((?:[^()]|\([^()]*\))*)\)", text):
        cls = found.get(request)
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        known = {f.name for f in dataclasses.fields(cls)}
        used = set(re.findall(r"\b(\w+)=", re.sub(r"\([^()]*\)", "", fields)))
        assert used <= known, (request, used - known)
