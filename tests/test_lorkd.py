"""LoRKD end to end: three synthetic tasks with different label sets planned together (--plans-from), one student
trained on mixed-task batches with a teacher for one task, each task predicted with its expert and exported as a
stock nnU-Net model folder of the plain student's size; and the errors a user can run into."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from conftest import PLANNED_ID, QUICK_TRAINING, ROOT, fake_teacher, make_env, run_cli, training_env, tree_digest
from nnkd.plans import network_from_plans
from nnkd.checkpoints import load_checkpoint

TASK_IDS = (PLANNED_ID, 992, 993)  # 991: the planned dataset (all labels, a teacher); 992, 993: its plans
LABELS = {991: ["background", "organ", "lesion", "vessel"], 992: ["background", "organ", "lesion"],
          993: ["background", "vessel"]}
NAMES = {i: f"Dataset{i}_Synthetic" for i in TASK_IDS}
RUN = "nnKDTrainer_LoRKD__nnKDPlans_tiny__3d_fullres"
STUDENT = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "-f", "0", "--budget", "tiny", "--method", "lorkd"]
FAST = ["-device", "cpu", "-npp", "1", "-nps", "1"]
SOURCE_FILES = ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json", "nnKDPlans_tiny.json",
                "splits_final.json", "nnUNetPlans_3d_fullres", "gt_segmentations")


def _error_line(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("nnkd: error:") and sum(x.startswith("nnkd: error:") for x in lines) == 1
    return lines[-1]


def _parameter_count(state_dict: dict) -> int:
    """Elements of a state dict, each tensor once (nnU-Net's networks list some modules under two names)."""
    return sum(t.numel() for t in {t.data_ptr(): t for t in state_dict.values()}.values())


def _labels(folder: Path) -> dict:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def lorkd(planned, tmp_path_factory):
    """Dataset 991 as planned by the `planned` fixture, 992 and 993 given its plans, one LoRKD student of all
    three trained for one epoch of two iterations with a teacher for 991."""
    root = tmp_path_factory.mktemp("lorkd")
    env = make_env(root)
    raw, preprocessed = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    shutil.copytree(Path(planned["env"]["nnUNet_raw"]) / NAMES[991], raw / NAMES[991])
    for name in SOURCE_FILES:
        source, target = planned["preprocessed"] / name, preprocessed / NAMES[991] / name
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    for dataset, labels, seed in ((992, ["organ", "lesion"], 1), (993, ["vessel"], 2)):
        run_cli("nnkd_make_synthetic", "-d", dataset, "--cases", "5", "--test-cases", "1", "--shape", "32", "32",
                "32", "--labels", *labels, "--seed", seed, env=env)
    raw_before = tree_digest(raw)
    planning = run_cli("nnkd_plan_and_preprocess", "-d", 992, 993, "--plans-from", PLANNED_ID, "--budget", "tiny",
                       "-c", "3d_fullres", "-np", "1", env=env)

    teacher_source = root / "teacher_source"  # a stock nnU-Net model folder of 991's nnUNetPlans (random weights)
    teacher_source.mkdir()
    shutil.copy(preprocessed / NAMES[991] / "nnUNetPlans.json", teacher_source / "plans.json")
    shutil.copy(preprocessed / NAMES[991] / "dataset.json", teacher_source / "dataset.json")
    teacher = fake_teacher(teacher_source, root / "teacher")
    training = run_cli("nnkd_train_lorkd", "-d", *TASK_IDS, "-c", "3d_fullres", "-f", "0", "--budget", "tiny",
                       "--teacher", f"{PLANNED_ID}={teacher}", *QUICK_TRAINING, env=training_env(env))
    fold = Path(env["nnUNet_results"]) / NAMES[991] / RUN / "fold_0"
    return {"env": env, "root": root, "raw_before": raw_before, "planning": planning.stdout,
            "training": training.stdout, "fold": fold, "teacher": teacher}


@pytest.fixture(scope="module")
def deployed(lorkd):
    """Task 992 predicted with nnkd_predict --task (fast path and --stock), every task exported, 992's export run by
    stock nnU-Net."""
    env, root = lorkd["env"], lorkd["root"]
    images = Path(env["nnUNet_raw"]) / NAMES[992] / "imagesTs"
    predicted = run_cli("nnkd_predict", "-i", images, "-o", root / "nnkd", *STUDENT, "--task", "992", *FAST, env=env)
    run_cli("nnkd_predict", "-i", images, "-o", root / "nnkd_stock", *STUDENT, "--task", "992", "--stock", *FAST,
            env=env)
    exported = run_cli("nnkd_export", *STUDENT, "--task", "all", "-o", root / "models", "--zip", env=env)
    stock = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "stock_predict.py"), "-m",
                            str(root / "models" / NAMES[992]), "-i", str(images), "-o", str(root / "stock"), "-f", "0",
                            *FAST], env=env, capture_output=True, text=True)
    assert stock.returncode == 0, stock.stderr[-3000:]
    return {"root": root, "predicted": predicted.stdout, "exported": exported.stdout}


def test_plans_from_gives_the_tasks_the_source_plans_and_their_own_fingerprint(lorkd):
    preprocessed = Path(lorkd["env"]["nnUNet_preprocessed"])
    for plans_name in ("nnUNetPlans", "nnKDPlans_tiny"):
        source = json.loads((preprocessed / NAMES[991] / f"{plans_name}.json").read_text())
        for dataset in (992, 993):
            target = json.loads((preprocessed / NAMES[dataset] / f"{plans_name}.json").read_text())
            assert target.pop("dataset_name") == NAMES[dataset]
            if plans_name == "nnKDPlans_tiny":
                assert target["nnkd"].pop("plans_from") == NAMES[991]
            assert target == {k: v for k, v in source.items() if k != "dataset_name"}
    for dataset in (992, 993):
        folder = preprocessed / NAMES[dataset]
        assert json.loads((folder / "dataset.json").read_text())["labels"] == {n: i for i, n in
                                                                               enumerate(LABELS[dataset])}
        fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text())
        assert len(fingerprint["spacings"]) == 5  # the target's own five cases
        assert len(list((folder / "nnUNetPlans_3d_fullres").glob("case_*.pkl"))) == 5
    assert tree_digest(Path(lorkd["env"]["nnUNet_raw"])) == lorkd["raw_before"]


def test_one_student_trains_on_the_three_tasks(lorkd):
    fold = lorkd["fold"]
    record = json.loads((fold / "tasks.json").read_text())
    assert [t["dataset"] for t in record["tasks"]] == [NAMES[i] for i in TASK_IDS]
    assert [list(t["labels"]) for t in record["tasks"]] == [LABELS[i] for i in TASK_IDS]
    assert [t["teacher"] for t in record["tasks"]] == [lorkd["teacher"], None, None]
    assert (record["rank"], record["alpha"]) == (4, 16.0)
    run = json.loads((fold / "teacher.json").read_text())
    assert run["method"] == "lorkd" and run["hyperparameters"] == {"kd_temperature": 10.0, "kd_weight": 1.0}
    assert [(t["dataset"], t["spec"]) for t in run["teachers"]] == [(NAMES[991], lorkd["teacher"])]
    assert len(run["teachers"][0]["sha256"]) == 64

    log = "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert "distillation: seg_loss" in log and "kd_kl" in log
    for dataset in TASK_IDS:  # per-task loss and pseudo-Dice lines; KD only where there is a teacher
        line = next(x for x in log.splitlines() if f"task {NAMES[dataset]}: seg" in x)
        assert ("kd" in line) == (dataset == 991)
        assert f"task {NAMES[dataset]}: pseudo Dice" in log

    checkpoint = load_checkpoint(fold / "checkpoint_final.pth")
    weights = checkpoint["network_weights"]
    assert any(k.endswith("lora_A") for k in weights) and not any(".seg_layers." in k for k in weights)
    assert [weights[f"heads.{t}.0.weight"].shape[0] for t in range(3)] == [4, 3, 2]
    assert checkpoint["nnkd"]["method"] == "lorkd"


def test_report_gives_each_task_its_dice_and_parameters(lorkd):
    fold = lorkd["fold"]
    report = json.loads((fold / "lorkd_report.json").read_text())
    assert [t["dataset"] for t in report["tasks"]] == [NAMES[i] for i in TASK_IDS]
    markdown = (fold / "lorkd_report.md").read_text()
    preprocessed = Path(lorkd["env"]["nnUNet_preprocessed"])
    for dataset, entry in zip(TASK_IDS, report["tasks"]):
        summary = json.loads((fold / "tasks" / NAMES[dataset] / "validation" / "summary.json").read_text())
        assert entry["dice"] == summary["foreground_mean"]["Dice"] and 0 <= entry["dice"] <= 1
        assert list(entry["dice_per_label"]) == LABELS[dataset][1:]
        assert f"task {NAMES[dataset]}: validation Dice {entry['dice']:.4f}" in lorkd["training"]
        assert f"| {NAMES[dataset]} |" in markdown
        # The fused task network is exactly the plain budget student of the task's plans.
        plans = json.loads((preprocessed / NAMES[dataset] / "nnKDPlans_tiny.json").read_text())
        dataset_json = json.loads((preprocessed / NAMES[dataset] / "dataset.json").read_text())
        plain = network_from_plans(plans, "3d_fullres", dataset_json)
        assert entry["deployed_parameters"] == sum(p.numel() for p in plain.parameters())
        assert entry["deployed_parameters"] == entry["shared_parameters"] + entry["head_parameters"]
        assert 0 < entry["expert_parameters"] < entry["shared_parameters"]
    weights = load_checkpoint(fold / "checkpoint_final.pth")["network_weights"]
    assert report["trained_parameters"] == _parameter_count(weights)  # no buffers: every tensor is trained


def test_predict_with_a_task_expert_equals_stock_nnunet_on_the_export(lorkd, deployed):
    """--stock runs the fused network in nnU-Net's own predictor: voxel for voxel stock nnU-Net's labels on the
    export. The default fast path (whichever CPU runtime was fastest) agrees up to float ties of this barely trained
    student's logits."""
    ours, stock = _labels(deployed["root"] / "nnkd_stock"), _labels(deployed["root"] / "stock")
    fast = _labels(deployed["root"] / "nnkd")
    assert ours.keys() == stock.keys() == fast.keys() and ours
    for name in ours:
        assert np.array_equal(ours[name], stock[name]), name
        assert set(np.unique(ours[name])) <= {0, 1, 2}  # 992's labels
        assert np.mean(fast[name] == stock[name]) > 0.999, name
    assert f"task {NAMES[992]} (its experts fused)" in deployed["predicted"]


def test_export_writes_one_stock_model_folder_per_task_of_the_plain_student_size(lorkd, deployed):
    models = deployed["root"] / "models"
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [NAMES[i] for i in TASK_IDS]
    for dataset in TASK_IDS:
        folder = models / NAMES[dataset]
        plans = json.loads((folder / "plans.json").read_text())
        dataset_json = json.loads((folder / "dataset.json").read_text())
        assert plans["dataset_name"] == NAMES[dataset] and plans["plans_name"] == "nnKDPlans_tiny-lorkd"
        assert list(dataset_json["labels"]) == LABELS[dataset]
        checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
        assert checkpoint["trainer_name"] == "nnUNetTrainer" and "nnkd" not in checkpoint
        network = network_from_plans(plans, "3d_fullres", dataset_json, deep_supervision=True)
        network.load_state_dict(checkpoint["network_weights"], strict=True)
        assert _parameter_count(checkpoint["network_weights"]) == sum(p.numel() for p in network.parameters())
        assert (models / f"{NAMES[dataset]}.zip").is_file()


def test_export_of_one_task_with_onnx(in_env, tmp_path, capsys):
    from nnkd.inference.export import ExportRequest, export
    from nnkd.inference.students import StudentRef

    student = StudentRef(str(PLANNED_ID), "3d_fullres", ["0"], budget="tiny", method="lorkd", task=NAMES[993])
    export(ExportRequest(student, tmp_path / "model", onnx=True))
    line = next(x for x in capsys.readouterr().out.splitlines() if "max |ONNX Runtime − torch|" in x)
    assert float(line.rsplit(" ", 1)[1]) < 1e-4
    model = tmp_path / "model"
    assert json.loads((model / "plans.json").read_text())["dataset_name"] == NAMES[993]
    assert list(json.loads((model / "student.onnx.json").read_text())["labels"]) == LABELS[993]
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()


def test_mixed_batch_forward_equals_each_tasks_fused_network():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnkd.models.lorkd import MultiTaskUNet

    torch.manual_seed(0)
    stock = PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d,
                          kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                          n_conv_per_stage=[1, 1, 1], num_classes=4, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                          norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                          nonlin=nn.LeakyReLU, deep_supervision=True)
    network = MultiTaskUNet.from_stock(stock, [4, 3, 2], rank=2, alpha=4)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)  # experts that change every convolution
    x, task_ids = torch.randn(5, 1, 8, 16, 16), torch.tensor([2, 0, 1, 0, 2])
    grouped = network.forward_tasks(x, task_ids)
    assert sorted(grouped) == [0, 1, 2]
    for task, group in grouped.items():
        assert group.index.tolist() == (task_ids == task).nonzero().flatten().tolist()
        expected = network.fused(task)(x[group.index])
        assert [o.shape[1] for o in group.outputs] == [[4, 3, 2][task]] * 2
        for ours, theirs in zip(group.outputs, expected):
            assert torch.allclose(ours, theirs, atol=1e-5)


def test_mixed_batches_take_turns_and_use_every_sample_in_order():
    from nnkd.trainers.multi_dataset import MixedTaskBatches

    def source(task: int):
        batch = 0
        while True:  # nnU-Net-like batches of two samples, deep-supervision targets as a list
            keys = [f"t{task}_b{batch}_s{i}" for i in range(2)]
            yield {"data": torch.full((2, 1, 4, 4, 4), float(task)), "keys": keys,
                   "target": [torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 2, 2, 2)]}
            batch += 1

    mixed = MixedTaskBatches([source(t) for t in range(3)], batch_size=2)
    batches = [next(mixed) for _ in range(6)]
    tasks = [t for b in batches for t in b["task"].tolist()]
    assert tasks == [0, 1, 2] * 4
    keys = [k for b in batches for k in b["keys"]]
    assert [k for k in keys if k.startswith("t1")] == ["t1_b0_s0", "t1_b0_s1", "t1_b1_s0", "t1_b1_s1"]
    assert all(torch.equal(b["data"][:, 0, 0, 0, 0], b["task"].float()) for b in batches)
    assert [t.shape for t in batches[0]["target"]] == [(2, 1, 4, 4, 4), (2, 1, 2, 2, 2)]


@pytest.fixture
def in_env(lorkd, monkeypatch):
    """The LoRKD test folders as this process's nnU-Net folders, for errors checked without a new process."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, lorkd["env"][name])
    return lorkd


def test_plans_from_refuses_other_channels_on_one_line_before_writing(lorkd):
    from nnkd.datasets.synthetic import SyntheticSpec, write_synthetic_dataset

    env = lorkd["env"]
    write_synthetic_dataset(SyntheticSpec(994, cases=2, channels=2, shape=(16, 16, 16)), Path(env["nnUNet_raw"]))
    preprocessed = Path(env["nnUNet_preprocessed"])
    before = tree_digest(preprocessed)
    result = run_cli("nnkd_plan_and_preprocess", "-d", 992, 994, "--plans-from", PLANNED_ID, "--budget", "tiny",
                     "-np", "1", env=env, check=False)
    assert "Dataset994_Synthetic has 2 input channel(s), Dataset991_Synthetic has 1" in _error_line(result)
    assert tree_digest(preprocessed) == before


def _non_lorkd_run(results: Path) -> None:
    """The files by which nnkd finds a trained student of another method."""
    folder = results / NAMES[991] / "nnKDTrainer_NoKD__nnKDPlans_tiny__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    shutil.copy(results / NAMES[991] / RUN / "plans.json", folder / "plans.json")
    shutil.copy(results / NAMES[991] / RUN / "dataset.json", folder / "dataset.json")
    (folder / "fold_0" / "teacher.json").write_text(json.dumps({"method": "none"}))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")


@pytest.mark.parametrize("method, task, fragment", [
    ("lorkd", "995", "task '995' is not one of this LoRKD student's tasks (Dataset991_Synthetic, "),
    ("lorkd", None, "is a LoRKD student of 3 tasks (Dataset991_Synthetic, Dataset992_Synthetic, "),
    ("lorkd", "all", "--task all is for nnkd_export"),
    ("none", "992", "--task picks a task of a LoRKD student, but nnKDTrainer_NoKD__nnKDPlans_tiny__3d_fullres was "
                    "trained with method none"),
], ids=["unknown-task", "no-task", "all", "method"])
def test_predict_needs_a_task_of_a_lorkd_student(in_env, tmp_path, method, task, fragment):
    from nnkd.errors import NnkdError
    from nnkd.inference.predict import PredictRequest, predict
    from nnkd.inference.students import StudentRef

    _non_lorkd_run(Path(in_env["env"]["nnUNet_results"]))
    student = StudentRef(str(PLANNED_ID), "3d_fullres", ["0"], budget="tiny", method=method, task=task)
    with pytest.raises(NnkdError) as error:
        predict(PredictRequest(Path(in_env["env"]["nnUNet_raw"]) / NAMES[992] / "imagesTs", tmp_path / "out",
                               student))
    assert fragment in str(error.value) and not (tmp_path / "out").exists()


def _other_patch_size(preprocessed: Path) -> None:
    """Dataset 995: 993's plans with another patch size, as if planned on its own."""
    folder = preprocessed / "Dataset995_Synthetic"
    shutil.copytree(preprocessed / NAMES[993], folder, dirs_exist_ok=True)
    plans = json.loads((folder / "nnKDPlans_tiny.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 16]
    (folder / "nnKDPlans_tiny.json").write_text(json.dumps(plans))


@pytest.mark.parametrize("datasets, teachers, fragment", [
    ((991, 995), (), "the nnKDPlans_tiny plans of Dataset995_Synthetic differ from Dataset991_Synthetic's "
                     "(3d_fullres.patch_size): the tasks were not planned together"),
    ((991, 992), (("993", "nnunet:/nowhere"),), "--teacher 993=… names Dataset993_Synthetic, which is not one of "
                                                 "-d 991 992"),
    ((991, 992, 991), (), "-d lists Dataset991_Synthetic more than once"),
], ids=["plans", "teacher", "repeated"])
def test_train_refuses_tasks_that_cannot_share_a_student(in_env, datasets, teachers, fragment):
    from nnkd.errors import NnkdError
    from nnkd.run.lorkd import LoRKDRequest, train_lorkd

    _other_patch_size(Path(in_env["env"]["nnUNet_preprocessed"]))
    results = Path(in_env["env"]["nnUNet_results"])
    before = tree_digest(results)
    with pytest.raises(NnkdError) as error:
        train_lorkd(LoRKDRequest(tuple(map(str, datasets)), "3d_fullres", "1", budget="tiny", teachers=teachers,
                                 device="cpu"))
    assert fragment in str(error.value)
    assert tree_digest(results) == before


@pytest.mark.parametrize("method, trainer", [("lorkd", None), (None, "nnKDTrainer_LoRKD")])
def test_nnkd_train_points_lorkd_to_its_own_command_before_writing(in_env, method, trainer):
    from nnkd.errors import NnkdError
    from nnkd.run.train import TrainRequest, train

    results = Path(in_env["env"]["nnUNet_results"])
    before = tree_digest(results)
    with pytest.raises(NnkdError, match="use nnkd_train_lorkd -d A B C"):
        train(TrainRequest(str(PLANNED_ID), "3d_fullres", "0", method=method, trainer=trainer, budget="tiny"))
    assert tree_digest(results) == before
