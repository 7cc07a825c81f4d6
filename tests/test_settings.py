"""Method hyper-parameters: declared rules, merged along the class's bases, checked in one place."""

import pytest

from nnkd.errors import NnkdError
from nnkd.method_table import ALL_METHOD_TRAINERS, METHOD_TRAINERS
from nnkd.trainers.lorkd import nnKDTrainer_LoRKD
from nnkd.trainers.methods import METHODS
from nnkd.trainers.settings import collect_rules


def settings(cls, **given):
    return cls.default_settings() | cls.coerce_settings(given)


def test_the_method_table_names_every_trainer_class():
    assert {name: cls.__name__ for name, cls in METHODS.items()} == METHOD_TRAINERS
    assert ALL_METHOD_TRAINERS["lorkd"] == nnKDTrainer_LoRKD.__name__ and nnKDTrainer_LoRKD.method == "lorkd"
    assert all(cls.method == name for name, cls in METHODS.items())


def test_each_trainer_has_the_capability_flags_of_its_table_row():
    """The table's flags are the one source: the classes get them, nnkd_distill's help lists the one-step
    methods from them (no method name is written in the CLI)."""
    import contextlib
    import io

    from nnkd.cli.distill import build_parser
    from nnkd.method_table import METHOD_TABLE

    for name, cls in METHODS.items():
        row = METHOD_TABLE[name]
        assert cls.needs_teacher == (row.teachers != "none") and cls.takes_transfer_set == row.transfer_set
        assert cls.takes_several_teachers == (row.teachers == "several"), name
    assert {n for n, r in METHOD_TABLE.items() if not r.one_step} == {"multiteacher", "tskd"}
    assert not METHODS["none"].needs_teacher and METHODS["multiteacher"].takes_several_teachers
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(out.getvalue().split())
    assert "(default logit): none, logit, cwd, feature, cka, drd (multiteacher, tskd and lorkd:" in text


@pytest.mark.parametrize("cls", [*METHODS.values(), nnKDTrainer_LoRKD])
def test_every_default_passes_and_every_rule_names_a_hyperparameter(cls):
    cls.check_settings(cls.default_settings(), teacher_count=2 if cls.takes_several_teachers else 1, stage_count=5)
    assert set(collect_rules(cls)) <= set(cls.hyperparameters), cls.__name__


@pytest.mark.parametrize("method, given, teachers, fragment", [
    ("logit", {"kd_loss": "hinton"}, 1, "kd_loss 'hinton' is unknown"),
    ("logit", {"kd_temperature": "0"}, 1, "kd_temperature 0.0 must be positive"),
    ("logit", {"kd_weight": "-1"}, 1, "kd_weight -1.0 must be at least 0"),
    ("logit", {"kd_schedule": "cosine"}, 1, "kd_schedule 'cosine' is unknown"),
    ("tskd", {"kd_loss": "hinton"}, 1, "kd_loss 'hinton' is unknown"),  # the LogitKD mixin's rules hold for tskd
    ("tskd", {"feature_loss": "l1"}, 1, "feature_loss 'l1' is unknown"),
    ("tskd", {"transfer_ratio": "-0.5"}, 1, "transfer_ratio -0.5 must be at least 0"),
    ("feature", {"feature_stages": "1,7"}, 1, "feature_stages names stage(s) 7, the student has stages 0–4"),
    ("cka", {"cka_weights": "1,1"}, 1, "cka_weights has 2 value(s) for 4 distilled stage(s)"),
    ("cka", {"cka_stages": "2,3,4", "cka_weights": "1,1"}, 1, "cka_weights has 2 value(s) for 3 distilled stage(s)"),
    ("drd", {"drd_alpha": "-1"}, 1, "drd_alpha -1.0 must be at least 0"),
    ("multiteacher", {"teacher_weights": "1,2,3"}, 2, "teacher_weights has 3 value(s) for 2 teacher(s)"),
    ("multiteacher", {"balance": "greedy"}, 2, "balance 'greedy' is unknown"),
    ("multiteacher", {"standardization_batches": "0"}, 2, "standardization_batches 0 must be at least 1"),
    # finiteness is part of the one check, so the trainer refuses it too when started without nnkd's launchers
    ("logit", {"kd_weight": "inf"}, 1, "kd_weight=inf is not a finite number"),
    ("multiteacher", {"teacher_weights": "1,nan"}, 2, "teacher_weights=(1, nan) is not a finite number"),
    ("cka", {"cka_weights": "1,-inf,1,1"}, 1, "is not a finite number"),
])
def test_a_value_outside_the_rules_is_refused(method, given, teachers, fragment):
    cls = METHODS[method]
    with pytest.raises(NnkdError) as error:
        cls.check_settings(settings(cls, **given), teachers, stage_count=5)
    assert fragment in str(error.value)


def test_stage_rules_wait_for_the_plans_when_the_stage_count_is_unknown():
    """nnkd_benchmark checks settings before any plans exist: stage counts are checked later, by nnkd_train."""
    cls = METHODS["cka"]
    cls.check_settings(settings(cls, cka_weights="1,1"), 1, stage_count=None)
    with pytest.raises(NnkdError):
        cls.check_settings(settings(cls, cka_weights="1,1"), 1, stage_count=5)


def test_an_unknown_or_mistyped_hyperparameter_is_refused():
    with pytest.raises(NnkdError, match="has no hyper-parameter 'kd_temp'"):
        METHODS["logit"].coerce_settings({"kd_temp": "2"})
    with pytest.raises(NnkdError, match="is not a valid float"):
        METHODS["logit"].coerce_settings({"kd_temperature": "hot"})


def test_a_run_record_from_a_newer_nnkd_says_so_and_a_damaged_one_is_corrupt(tmp_path):
    import json

    from nnkd.trainers.run_config import RunConfig
    from nnkd.trainers.tune import TuningConfig

    RunConfig(method="none", trainer="nnKDTrainer_NoKD", seed=1).save(tmp_path)
    assert RunConfig.load(tmp_path).seed == 1
    record = json.loads((tmp_path / "teacher.json").read_text())
    (tmp_path / "teacher.json").write_text(json.dumps(record | {"curriculum": "easy-first",
                                                                "versions": {"nnkd": "9.9.0"}}))
    with pytest.raises(NnkdError, match=r"written by nnkd 9\.9\.0: its field\(s\) curriculum are unknown"):
        RunConfig.load(tmp_path)
    (tmp_path / "teacher.json").write_text('{"method": "none"}')  # a required field missing
    with pytest.raises(NnkdError, match="is corrupt"):
        RunConfig.load(tmp_path)
    TuningConfig(base_spec="sam:/x.pth", seed=4).save(tmp_path)
    assert TuningConfig.load(tmp_path).seed == 4


def test_teacher_entries_are_typed_and_round_trip_as_the_json_they_always_were(tmp_path):
    import json

    from nnkd.trainers.run_config import RunConfig, TeacherEntry

    cached = RunConfig(method="logit", trainer="nnKDTrainer_Logit",
                       teacher={"spec": "nnunet:/t", "cache": "/c", "sha256": "ab"})  # a dict is read as an entry
    assert cached.teacher == TeacherEntry("nnunet:/t", sha256="ab", cache="/c") and cached.reads_cache
    cached.save(tmp_path)
    assert json.loads((tmp_path / "teacher.json").read_text())["teacher"] == {"spec": "nnunet:/t", "sha256": "ab",
                                                                             "cache": "/c"}
    assert RunConfig.load(tmp_path) == cached
    several = RunConfig(method="multiteacher", trainer="nnKDTrainer_MultiTeacher",
                        teachers=[TeacherEntry("nnunet:/a"), TeacherEntry("sam:/b.pth", dataset="Dataset1_X")])
    several.save(tmp_path)
    loaded = RunConfig.load(tmp_path)
    assert loaded.teacher_specs == ["nnunet:/a", "sam:/b.pth"] and not loaded.reads_cache
    assert loaded.teachers[1].dataset == "Dataset1_X"
    record = json.loads((tmp_path / "teacher.json").read_text())
    record["teachers"][0]["colour"] = "red"  # an entry with a field nnkd does not know
    (tmp_path / "teacher.json").write_text(json.dumps(record))
    with pytest.raises(NnkdError, match="is corrupt"):
        RunConfig.load(tmp_path)


def test_help_and_the_docs_list_every_method_of_the_table():
    """The method table is the one list: nnkd_train --help prints it, docs/training.md's table covers it."""
    import contextlib
    import io
    from pathlib import Path

    from nnkd.cli.train import build_parser
    from nnkd.method_table import METHOD_TABLE

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    training_doc = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    for name, method in METHOD_TABLE.items():
        assert f"  {name:13s}{method.summary}" in out.getvalue(), name
        assert f"| `{name}` | `{method.trainer}` |" in training_doc, name


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), (None, "cores"), ("0", "cores"), ("two", "cores")])
def test_cpu_threads_follow_omp_num_threads_else_every_core(monkeypatch, value, expected):
    """Trainings side by side (nnkd_benchmark --jobs) each keep to their OMP_NUM_THREADS share of the cores;
    without a usable value nnkd uses every core, as nnU-Net does."""
    import multiprocessing

    import torch

    from nnkd.devices import cpu_threads, resolve_device

    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    wanted = multiprocessing.cpu_count() if expected == "cores" else expected
    before = torch.get_num_threads()
    try:
        assert cpu_threads() == wanted
        resolve_device("cpu")
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["logit", "tskd"])
def test_a_linear_kd_schedule_fades_the_logit_weight_to_zero_at_the_last_epoch(method):
    """kd_schedule=linear: kd_weight at the first epoch, 0 at the last, linear in between; constant: kd_weight."""
    cls = METHODS[method]
    trainer = cls.__new__(cls)  # the weight depends on the settings and the epoch only
    trainer.kd_weight, trainer.num_epochs = 2.0, 5
    weights = {}
    for schedule in ("constant", "linear"):
        trainer.kd_schedule = schedule
        weights[schedule] = []
        for epoch in range(5):
            trainer.current_epoch = epoch
            weights[schedule].append(trainer.logit_weight())
    assert weights == {"constant": [2.0] * 5, "linear": [2.0, 1.5, 1.0, 0.5, 0.0]}
