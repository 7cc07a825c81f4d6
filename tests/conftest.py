"""Shared fixtures: private nnU-Net folders and one small planned synthetic dataset per test session."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from filelock import FileLock

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--cases", "8", "--shape", "32", "32", "32"]  # fast: 8 cases of about 32³
PLANNED_ID = 991


def run_fold(dataset_results: Path, trainer: str, fold="0", plans="nnKDPlans_tiny",
             configuration="3d_fullres") -> Path:
    """The fold folder of the one run of `trainer` in a dataset's results (nnkd_train files a run as
    <trainer>[@<run name>]__<plans>__<configuration>)."""
    from nnkd.run_names import trainer_run_folders

    runs = trainer_run_folders(Path(dataset_results), trainer, plans, configuration)
    assert len(runs) == 1, f"expected one run of {trainer}, found {runs}"
    return runs[0] / f"fold_{fold}"


def run_cli(name: str, *args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run an installed console script the way a user does; return its output."""
    result = subprocess.run([str(BIN / name), *map(str, args)], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_clis(calls: list, check: bool = False, workers: int = 2) -> list[subprocess.CompletedProcess]:
    """run_cli for independent calls (name, args, env), `workers` at a time; the results in the calls' order.
    Much of a console script's run is Python importing on one core, so two calls take little longer than one."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda call: run_cli(call[0], *call[1], env=call[2], check=False), calls))
    for (name, args, _), result in zip(calls, results):
        if check and result.returncode != 0:
            raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return results


def refuse_in_process(name: str, *args, env: dict) -> subprocess.CompletedProcess:
    """An nnkd console script's main() run in this process with `env` as its environment: stdout, stderr and the
    exit code as run_cli returns them, without the seconds each new process spends importing torch and nnU-Net.
    For commands that must stop before any work (the refusal catalogues): nnU-Net's own modules read their
    folder variables once at import, so a command that gets as far as nnU-Net's trainer belongs in run_cli."""
    (entry,) = entry_points(group="console_scripts", name=name)
    main = entry.load()
    saved, out, err, code = dict(os.environ), io.StringIO(), io.StringIO(), 0
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except BaseException:  # as Python ends a process on an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([name, *map(str, args)], code, out.getvalue(), err.getvalue())


def refuse_all_in_process(calls: list) -> list[subprocess.CompletedProcess]:
    """refuse_in_process for each (name, args, env), one after the other."""
    return [refuse_in_process(name, *args, env=env) for name, args, env in calls]


def selected_params(request, test_name: str, name: str | None = None) -> list:
    """The value of parameter `name` (None without a name) of each collected, not deselected, item of
    `test_name` in the requesting module: a module fixture that runs the commands of all those cases at once
    (run_clis) runs only the cases that will be checked."""
    return [item.callspec.params[name] if name else None for item in request.session.items
            if getattr(item, "module", None) is request.module and getattr(item, "originalname", None) == test_name]


def tree_digest(root: Path) -> dict:
    """sha256 and mtime of every file under root, to prove nothing was touched."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_env(root: Path) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    # nnkd_val_mirroring=0: a final validation of one window per patch instead of nnU-Net's 8 mirrored ones (the
    # session's "none" student keeps them: test_training checks both)
    env.update(nnUNet_n_proc_DA="1", OMP_NUM_THREADS="2", nnUNet_def_n_proc="1", nnkd_val_mirroring="0")
    return env


# Test modules that use the session's trained students (`trained`, ~2 minutes to build): with --dist loadfile (make
# test) they go to one xdist worker as one unit, so the students are trained once, not once per worker; every other
# module is its own unit, as loadfile has it. (xdist's --dist loadgroup would do this with marks, but it stopped
# grouping with pytest 9.2: pytest-dev/pytest-xdist#1386.)
TRAINED_GROUP = {"test_deploy", "test_guards", "test_reliability", "test_training", "test_training_errors"}


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndTrainedGroup(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "trained students" if Path(module).stem in TRAINED_GROUP else module

    return ModulesAndTrainedGroup(config, log)


@pytest.fixture
def nnunet_env(tmp_path) -> dict:
    """Empty nnU-Net folders of this test only."""
    return make_env(tmp_path)


def built_once(tmp_path_factory, name: str, build) -> tuple[Path, dict]:
    """`build(folder) -> record` run once per test session however many xdist workers ask for it: the first builds
    into a folder beside the workers' own, under a file lock (the others wait), and every worker works on its own
    copy (tests write into their nnU-Net folders; copy2 keeps the files' times, which tree_digest compares).
    (this worker's folder, the record)."""
    own = tmp_path_factory.mktemp(name)
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return own, build(own)
    shared = tmp_path_factory.getbasetemp().parent / f"shared_{name}"
    record = shared.with_suffix(".json")
    with FileLock(f"{shared}.lock"):
        if not record.is_file():
            shutil.rmtree(shared, ignore_errors=True)
            record.write_text(json.dumps(build(shared)))
    shutil.copytree(shared, own, dirs_exist_ok=True)
    return own, json.loads(record.read_text())


def _plan_and_train_teacher(root: Path) -> dict:
    """Dataset 991 (8 cases of ~32³) planned with a tiny budget and preprocessed for 3d_fullres, and a real nnU-Net
    teacher for it: stock nnUNetv2_train with a 2-iteration trainer nnkd never imports."""
    env = make_env(root)
    run_cli("nnkd_make_synthetic", "-d", PLANNED_ID, *SMALL, env=env)
    before = tree_digest(Path(env["nnUNet_raw"]))
    result = run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "-c", "3d_fullres", "--budget", "tiny",
                     "-np", "1", "--verify_dataset_integrity", env=env)
    run_cli("nnUNetv2_train", PLANNED_ID, "3d_fullres", "0", "-tr", "nnUNetTrainer_Tiny", "-device", "cpu",
            env={**training_env(env), "nnUNet_extTrainer": str(ROOT / "tests" / "ext_trainers")})
    return {"raw_before": before, "stdout": result.stdout}


@pytest.fixture(scope="session")
def planned_and_teacher(tmp_path_factory):
    """_plan_and_train_teacher's folders, built once per test session (built_once): this worker's copy."""
    root, record = built_once(tmp_path_factory, "planned", _plan_and_train_teacher)
    return make_env(root), {k: tuple(v) for k, v in record["raw_before"].items()}, record["stdout"]


@pytest.fixture(scope="session")
def planned(planned_and_teacher):
    """Dataset 991 (8 cases of ~32³) planned with a tiny budget and preprocessed for 3d_fullres."""
    env, before, stdout = planned_and_teacher
    return {"env": env, "raw_before": before, "stdout": stdout,
            "preprocessed": Path(env["nnUNet_preprocessed"]) / "Dataset991_Synthetic"}


# One epoch of two iterations, one validation iteration: enough to run every part of nnU-Net's loop.
QUICK_TRAINING = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations-per-epoch", "1",
                  "--device", "cpu"]


def training_env(env: dict, **extra) -> dict:
    """Single-threaded data augmentation (nnU-Net's planner needs nnUNet_n_proc_DA > 0, training not)."""
    return {**env, "nnUNet_n_proc_DA": "0", **extra}


@pytest.fixture(scope="session")
def teacher(planned):
    """A real nnU-Net teacher of the planned dataset: stock nnUNetv2_train with a 2-iteration trainer nnkd never
    imports (trained with the plans, in _plan_and_train_teacher)."""
    env = training_env(planned["env"])
    folder = Path(env["nnUNet_results"]) / "Dataset991_Synthetic" / "nnUNetTrainer_Tiny__nnUNetPlans__3d_fullres"
    return {"env": env, "folder": folder, "spec": f"nnunet:{folder}"}


@pytest.fixture(scope="session")
def trained(teacher):
    """The tiny student trained once with each built-in method; method -> (fold folder, stdout). The three
    trainings are independent (each its own trainer folder) and run side by side; none in float32, feature in bf16
    (nnkd_cpu_bf16 0 and 1, whatever the CPU), logit as this CPU chooses; none validates with nnU-Net's mirroring,
    the others without (nnkd_val_mirroring)."""
    methods = ("none", "logit", "feature")
    precision = {"none": {"nnkd_cpu_bf16": "0", "nnkd_val_mirroring": "1"}, "logit": {},
                 "feature": {"nnkd_cpu_bf16": "1"}}
    calls = [("nnkd_train", [PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", method,
                             *([] if method == "none" else ["--teacher", teacher["spec"]]), *QUICK_TRAINING],
              {**teacher["env"], **precision[method]}) for method in methods]
    runs = {}
    for method, result in zip(methods, run_clis(calls, check=True, workers=len(calls))):
        trainer = {"none": "NoKD", "logit": "Logit", "feature": "Feature"}[method]
        folder = run_fold(Path(teacher["env"]["nnUNet_results"]) / "Dataset991_Synthetic", f"nnKDTrainer_{trainer}")
        runs[method] = (folder, result.stdout)
    return runs


@pytest.fixture(scope="session")
def deployed_student(trained, teacher, tmp_path_factory):
    """The logit student predicted with nnkd (imagesTs; on the fast path, and with --stock), exported (zip + ONNX),
    and predicted by stock nnU-Net from the export; test_deploy checks each output, test_reliability that none of it wrote nnUNet_raw."""
    env = teacher["env"]
    root = tmp_path_factory.mktemp("deploy")
    images = Path(env["nnUNet_raw"]) / "Dataset991_Synthetic" / "imagesTs"
    before = tree_digest(images)
    student = ["-d", PLANNED_ID, "-c", "3d_fullres", "--budget", "tiny", "-f", "0", "--method", "logit"]
    fast = ["-device", "cpu", "-npp", "1", "-nps", "1"]
    predicted = run_cli("nnkd_predict", "-i", images, "-o", root / "nnkd", *student, *fast, env=env)  # fast path
    stock_torch = run_cli("nnkd_predict", "-i", images, "-o", root / "nnkd_stock", *student, *fast, "--stock",
                          env=env)
    exported = run_cli("nnkd_export", *student, "-o", root / "model", "--zip", "--onnx", env=env)
    stock = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "stock_predict.py"), "-m",
                            str(root / "model"), "-i", str(images), "-o", str(root / "stock"), "-f", "0", *fast],
                           env=env, capture_output=True, text=True)
    assert stock.returncode == 0, stock.stderr[-3000:]
    return {"root": root, "images": images, "images_before": before, "env": env,
            "predict_stdout": predicted.stdout, "stock_stdout": stock_torch.stdout, "export_stdout": exported.stdout}


def fake_teacher(teacher_folder: Path, target: Path, configuration="3d_fullres", edit_plans=None,
                 edit_dataset=None) -> str:
    """An nnU-Net model folder whose network is built from (edited) copies of the real teacher's files."""
    plans = json.loads((teacher_folder / "plans.json").read_text())
    dataset = json.loads((teacher_folder / "dataset.json").read_text())
    if edit_plans:
        edit_plans(plans)
    if edit_dataset:
        edit_dataset(dataset)
    folder = target / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    from nnkd.plans import network_from_plans

    network = network_from_plans(plans, configuration, dataset)
    torch.save({"network_weights": network.state_dict(), "init_args": {"configuration": configuration}},
               folder / "fold_0" / "checkpoint_final.pth")
    return f"nnunet:{folder}"


def error_line(result) -> str:
    """The run failed with exactly one `nnkd: error: <problem> — <remedy>` line, last on stderr, no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("nnkd: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    assert " — " in errors[0], errors[0]  # what is wrong — what to do
    return errors[0]
