"""The rooms of nnkd import downward only (docs/architecture.md): parse every module's imports, module-level
and inside functions, and fail on any import a room is not allowed."""

import ast
from pathlib import Path

import nnkd

PACKAGE = Path(nnkd.__file__).parent
# Modules every room may import: they import nothing of nnkd beyond each other.
FOUNDATION = {"errors", "atomic", "outputs", "devices", "nnunet_env", "nnunet_compat", "plans", "records", "method_table",
              "teacher_spec", "run_names", "metrics", "checkpoints", "folds", "network_runtimes"}
ALLOWED = {
    "teachers": set(),
    "distill": set(),
    "planners": set(),
    "datasets": set(),
    "models": {"distill"},
    "cache": {"teachers"},
    "trainers": {"distill", "teachers", "cache", "planners", "datasets", "models"},
    "inference": {"planners", "models"},
    "run": {"trainers", "distill", "teachers", "cache", "planners", "datasets", "models"},
    "evaluation": {"inference", "planners", "models"},
    "benchmark": {"evaluation", "run", "trainers", "inference", "teachers", "cache", "planners", "datasets", "models",
                  "distill"},
    "pipeline": {"evaluation", "run", "inference", "trainers", "cache", "planners", "datasets", "teachers", "models"},
    "cli": {"pipeline", "evaluation", "run", "benchmark", "inference", "trainers", "cache", "planners", "datasets",
            "teachers", "models"},
}


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_rooms(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("nnkd."):
            found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("nnkd.")]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno} uses a relative import; nnkd imports absolutely")
    return found


def test_every_room_imports_only_rooms_below_it():
    forbidden = []
    rooms = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        room = room_of(path)
        if room == "__init__":
            continue
        rooms.add(room)
        allowed = FOUNDATION | {room} | (set() if room in FOUNDATION else ALLOWED[room])
        if room in FOUNDATION:  # the foundation imports only the foundation
            allowed = FOUNDATION
        forbidden += [f"{path.relative_to(PACKAGE)}:{line} imports nnkd.{target}"
                      for line, target in imported_rooms(path) if target not in allowed]
    assert not forbidden, "\n".join(forbidden)
    assert rooms - FOUNDATION == set(ALLOWED), "a room is missing from the rules (docs/architecture.md)"


def test_the_rule_check_catches_a_forbidden_import(tmp_path):
    module = PACKAGE / "cache" / "_probe_forbidden.py"
    try:
        module.write_text("def f():\n    from nnkd.trainers.methods import METHODS\n")
        try:
            test_every_room_imports_only_rooms_below_it()
        except AssertionError as e:
            assert "cache/_probe_forbidden.py:2 imports nnkd.trainers" in str(e)
        else:
            raise AssertionError("a cache → trainers import passed the rule check")
    finally:
        module.unlink()


# Foundation modules that import no heavy library (torch, numpy, nnU-Net): nothing is gained by importing them inside a
# function, which only hides the import graph, so they are imported at module level everywhere.
CHEAP_FOUNDATION = ("errors", "atomic", "outputs", "nnunet_env", "records", "method_table", "teacher_spec", "run_names",
                    "folds")


def function_level_imports(path: Path, modules) -> list[str]:
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [f"{path.relative_to(PACKAGE)}:{node.lineno} imports {node.module} inside a function"
                      for node in ast.walk(function) if isinstance(node, ast.ImportFrom)
                      and node.module in {f"nnkd.{m}" for m in modules}]
    return found


def test_cheap_foundation_modules_are_imported_at_module_level_and_stay_cheap():
    """A function-level import is kept for deferring a heavy dependency (torch, onnx, peft, transformers …); the
    foundation modules that import none of them are imported at the top of every module."""
    import subprocess
    import sys

    inside = [line for path in sorted(PACKAGE.rglob("*.py")) for line in function_level_imports(path, CHEAP_FOUNDATION)]
    assert not inside, "\n".join(inside)
    code = (f"import sys; import {', '.join('nnkd.' + m for m in CHEAP_FOUNDATION)}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'nnunetv2', 'onnxruntime'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"a cheap foundation module now imports {out.strip()}"
    probe = PACKAGE / "cli" / "_probe_inner_import.py"
    try:
        probe.write_text("def f():\n    from nnkd.errors import NnkdError\n")
        assert function_level_imports(probe, CHEAP_FOUNDATION) == [
            "cli/_probe_inner_import.py:2 imports nnkd.errors inside a function"]
    finally:
        probe.unlink()


def test_deployment_needs_no_training_code():
    """Loading nnkd_predict's and nnkd_export's modules imports no trainer (a subprocess sees sys.modules fresh)."""
    import subprocess
    import sys

    code = ("import sys, nnkd.inference.predict, nnkd.inference.export, nnkd.inference.students; "
            "print([m for m in sys.modules if m.startswith('nnkd.trainers') or m.split('.')[:2] == ['nnkd', 'run']])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_nnunet_finds_every_method_trainer_and_named_runs_in_nnkds_trainer_folder():
    """nnU-Net's own trainer search over nnkd's folder (what nnUNet_extTrainer points to) finds each trainer of the
    method table, with no import list to keep in step, and a named run as a subclass."""
    from nnunetv2.utilities.find_objects import recursive_find_python_class

    from nnkd.method_table import ALL_METHOD_TRAINERS
    from nnkd.trainers import EXT_TRAINER_FOLDER

    for trainer in [*ALL_METHOD_TRAINERS.values(), "nnKDTrainer_Logit@my-run"]:
        found = recursive_find_python_class(EXT_TRAINER_FOLDER, trainer, "nnkd.trainers.nnunet_ext")
        assert found is not None and found.__name__ == trainer, trainer
    assert issubclass(recursive_find_python_class(EXT_TRAINER_FOLDER, "nnKDTrainer_Logit@my-run",
                                                  "nnkd.trainers.nnunet_ext"),
                      recursive_find_python_class(EXT_TRAINER_FOLDER, "nnKDTrainer_Logit", "nnkd.trainers.nnunet_ext"))


MAX_FUNCTION_LINES = 60  # issue 45: a function that does not fit a screen is split where its steps part


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_nnkd_is_longer_than_a_screen(tmp_path):
    assert long_functions(PACKAGE) == []
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert long_functions(tmp_path / "pkg") == ["pkg/m.py:1 f (61 lines)"]


def test_the_trained_group_names_every_module_that_uses_the_trained_students():
    """A module that starts using `trained` must join TRAINED_GROUP, or its worker trains the students again."""
    from conftest import TRAINED_GROUP

    users = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "trained" for a in node.args.args):
                users.add(path.stem)
    assert users == TRAINED_GROUP
