"""The teacher registry, its CLI, plugins, TorchScript / deepbet teachers and nnU-Net fold ensembles."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import fake_teacher, run_cli, refuse_in_process
from helpers.teacher_checks import check_teacher_and_kd_step
from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.teachers.bridge import InputBridge, run_slicewise, slice_indices, unit_range
from nnkd.teachers.registry import TeacherSpec, create_teacher, list_teachers, parse_options

FAMILIES = {"nnunet", "torchscript", "deepbet", "sam", "medsam", "sam-med3d", "dinov2", "rad-dino", "swin",
            "medclip", "tuned"}


def test_every_family_is_registered():
    assert FAMILIES <= set(list_teachers())


def test_specs_parse_paths_options_and_bare_families():
    spec = TeacherSpec.parse("sam:/ckpt/sam_vit_b.pth?variant=vit_b&slices=8")
    assert (spec.family, spec.path, spec.options) == ("sam", "/ckpt/sam_vit_b.pth", {"variant": "vit_b", "slices": "8"})
    assert TeacherSpec.parse("deepbet?size=64,64,64") == TeacherSpec("deepbet", "", {"size": "64,64,64"},
                                                                        "deepbet?size=64,64,64")
    assert TeacherSpec.parse("deepbet").path == ""
    with pytest.raises(NnkdError, match="not of the form"):
        TeacherSpec.parse("sam:")
    with pytest.raises(NnkdError, match="malformed options"):
        TeacherSpec.parse("sam:/x.pth?slices")


def test_options_are_typed_and_bad_values_are_named():
    defaults = {"slices": 8, "scale": 1.0, "blocks": (2, 5), "variant": "vit_b", "half": False}
    parsed = parse_options("sam", {"slices": "4", "blocks": "1,3", "half": "true"}, defaults)
    assert parsed == {"slices": 4, "scale": 1.0, "blocks": (1, 3), "variant": "vit_b", "half": True}
    with pytest.raises(NnkdError, match="slices=many of sam teacher is not an integer"):
        parse_options("sam", {"slices": "many"}, defaults)
    with pytest.raises(NnkdError, match="unknown option.*colour.*take blocks, half, scale, slices, variant"):
        parse_options("sam", {"colour": "red"}, defaults)


def test_bridge_maps_intensities_channels_and_size():
    x = torch.randn(2, 1, 20, 30) * 5 + 3
    unit = unit_range(x)
    assert unit.min() == 0 and unit.max() == 1
    bridged = InputBridge(channels=3, size=(16, 16), scale="unit", value_range=255, mean=(100.0, 110, 120),
                          std=(50.0, 50, 50))(x)
    assert bridged.shape == (2, 3, 16, 16)
    assert torch.allclose(bridged[:, 1] - bridged[:, 0], torch.full_like(bridged[:, 0], -10 / 50), atol=1e-5)
    zscored = InputBridge(channels=1, scale="unit-zscore")(x)
    assert zscored.mean().abs() < 1e-5 and (zscored.std() - 1).abs() < 1e-2


def test_2d_models_see_3d_patches_on_a_bounded_number_of_aligned_slices():
    assert slice_indices(5, 8) == [0, 1, 2, 3, 4]
    assert slice_indices(32, 4) == [4, 12, 20, 28]
    seen = []

    def encode(images):
        seen.append(images.shape)
        return [images.mean(1, keepdim=True)[..., ::2, ::2]]

    patch = torch.arange(32.0).reshape(1, 1, 32, 1, 1).expand(2, 1, 32, 4, 6).contiguous()
    (features,) = run_slicewise(encode, patch, max_slices=4)
    assert seen == [torch.Size([8, 1, 4, 6])]  # 2 patches × 4 slices in one batch
    assert features.shape == (2, 1, 4, 2, 3)
    assert features[0, 0, :, 0, 0].tolist() == [4, 12, 20, 28]  # stacked back in slice order


class _TinySegNet(nn.Module):
    def __init__(self, softmax: bool):
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.encoder = nn.ModuleDict({"deep": nn.Conv3d(4, 8, 3, stride=2, padding=1)})
        self.head = nn.Conv3d(8, 2, 1)
        self.softmax = softmax

    def forward(self, x):
        skip = self.stem(x)
        deep = self.encoder["deep"](skip)
        logits = nn.functional.interpolate(self.head(deep), scale_factor=4.0)
        return logits.softmax(1) if self.softmax else logits


class _NestedSegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.body = nn.Sequential(nn.Conv3d(4, 8, 3, stride=2, padding=1))
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.head(self.body(self.stem(x))), scale_factor=4.0)


def _scripted(tmp_path: Path, model: nn.Module, name="model.pt") -> Path:
    torch.manual_seed(0)
    path = tmp_path / name
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path


@pytest.mark.parametrize("softmax", [False, True])
def test_torchscript_teacher_reads_named_children_and_turns_softmax_back_into_logits(tmp_path, softmax):
    model = _TinySegNet(softmax)
    path = _scripted(tmp_path, model)
    teacher = create_teacher(f"torchscript:{path}?features=stem&labels=background,brain&probe=16")
    assert teacher.output_kind == ("softmax" if softmax else "logits")
    assert teacher.feature_channels == [4] and teacher.feature_strides == [(2, 2, 2)]
    assert check_teacher_and_kd_step(teacher, torch.randn(1, 1, 14, 16, 12)) == [torch.Size([1, 4, 7, 8, 6])]
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        out, reference = teacher(x), model(x)
    assert torch.allclose(out.logits.softmax(1), reference.softmax(1) if not softmax else reference, atol=1e-5)
    assert torch.allclose(out.features[0], model.stem(x), atol=1e-6)


def test_torchscript_children_are_found_by_dotted_name_and_unknown_ones_are_listed(tmp_path):
    path = _scripted(tmp_path, _NestedSegNet())
    teacher = create_teacher(f"torchscript:{path}?features=stem,body&probe=16")
    assert teacher.feature_channels == [4, 8] and teacher.labels is None
    with pytest.raises(NnkdError, match="never calls head2.*name children its forward calls: .*stem.*body"):
        create_teacher(f"torchscript:{path}?features=head2&probe=16")
    with pytest.raises(NnkdError, match="labels= names 3 channel"):
        create_teacher(f"torchscript:{path}?labels=a,b,c&probe=16")
    with pytest.raises(NnkdError, match="fails on a probe input"):
        create_teacher(f"torchscript:{path}?channels=3&probe=16")


def test_torchscript_teacher_refuses_files_that_are_not_scripted_models(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip archive")
    with pytest.raises(NnkdError, match="not a loadable TorchScript model"):
        create_teacher(f"torchscript:{tmp_path / 'junk.pt'}")
    with pytest.raises(NnkdError, match="not found"):
        create_teacher(f"torchscript:{tmp_path / 'missing.pt'}")


def test_deepbet_is_a_real_pretrained_teacher_with_logits():
    teacher = create_teacher("deepbet")
    assert teacher.labels == {"background": 0, "brain": 1}
    assert 2.0e6 < sum(p.numel() for p in teacher.parameters()) < 2.3e6
    assert teacher.feature_channels == [16, 32, 64, 128]
    assert teacher.feature_strides == [(4, 4, 4), (8, 8, 8), (16, 16, 16), (32, 32, 32)]
    shapes = check_teacher_and_kd_step(teacher, torch.randn(1, 1, 40, 36, 44))
    assert shapes[0] == torch.Size([1, 16, 10, 9, 11])


def test_nnunet_fold_ensemble_averages_the_folds_logits(teacher, tmp_path):
    spec = fake_teacher(teacher["folder"], tmp_path)
    folder = Path(spec.split(":", 1)[1])
    shutil.copytree(folder / "fold_0", folder / "fold_1")
    checkpoint = torch.load(folder / "fold_1" / "checkpoint_final.pth", weights_only=True)
    checkpoint["network_weights"] = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                                     for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, folder / "fold_1" / "checkpoint_final.pth")
    ensemble = create_teacher(f"{spec}?folds=0,1")
    singles = [create_teacher(f"{spec}?fold={f}") for f in (0, 1)]
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        outs = [t(x) for t in [ensemble, *singles]]
    assert torch.allclose(outs[0].logits, (outs[1].logits + outs[2].logits) / 2, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(outs[0].features, outs[1].features))
    assert ensemble.checkpoint_sha256 not in (singles[0].checkpoint_sha256, singles[1].checkpoint_sha256)
    with pytest.raises(NnkdError, match="teacher fold 3 not found"):
        create_teacher(f"{spec}?folds=0,3")


def test_nnkd_teachers_lists_and_describes(nnunet_env):
    listed = run_cli("nnkd_teachers", env=nnunet_env).stdout
    assert all(f in listed for f in FAMILIES)
    described = run_cli("nnkd_teachers", "describe", "deepbet", "--patch", "32,32,32", "--json", env=nnunet_env)
    info = json.loads(described.stdout)
    assert info["logits"] and info["in_channels"] == 1 and info["spatial_dims"] == 3
    assert [s["channels"] for s in info["stages"]] == [16, 32, 64, 128]
    assert info["forward_seconds"] > 0 and info["feature_shapes"][0] == [16, 8, 8, 8]
    table = run_cli("nnkd_teachers", "describe", "deepbet", "--patch", "32,32,32", env=nnunet_env).stdout
    assert "logits       yes: background, brain" in table and "2.13 M" in table
    bad = refuse_in_process("nnkd_teachers", "describe", "deepbet", "--patch", "32,32", env=nnunet_env)
    assert bad.returncode != 0 and bad.stderr.startswith("nnkd: error: the teacher takes 3D patches")


PLUGIN = '''
import torch
from nnkd.teachers.base import Teacher, TeacherOutput


class MeanTeacher(Teacher):
    spatial_dims, in_channels, feature_channels, feature_strides = 3, 1, [1], [(2, 2, 2)]

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return TeacherOutput([self.scale * torch.nn.functional.avg_pool3d(x, 2)], None)


def build(path, options, **_):
    """A plugin teacher: the 2×-pooled patch."""
    return MeanTeacher()
'''


def test_a_plugin_package_adds_a_family_through_its_entry_point(tmp_path, nnunet_env):
    package = tmp_path / "nnkd_mean_teacher"
    (package / "nnkd_mean_teacher").mkdir(parents=True)
    (package / "nnkd_mean_teacher" / "__init__.py").write_text(PLUGIN)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "nnkd-mean-teacher"\nversion = "0.1"\n'
        '[project.entry-points."nnkd.teachers"]\nmean = "nnkd_mean_teacher:build"\n')
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True)
    env = {**nnunet_env, "PYTHONPATH": str(site)}
    assert "mean         A plugin teacher: the 2×-pooled patch." in run_cli("nnkd_teachers", env=env).stdout
    info = json.loads(run_cli("nnkd_teachers", "describe", "mean", "--patch", "8,8,8", "--json", env=env).stdout)
    assert info["feature_shapes"] == [[1, 4, 4, 4]] and info["spec"] == "mean"
    assert "mean" not in run_cli("nnkd_teachers", env=nnunet_env).stdout.split()


class _Probe(Teacher):
    spatial_dims, in_channels, feature_channels, feature_strides = 3, 1, [1], [(1, 1, 1)]

    def forward(self, x):
        return TeacherOutput([x], None)


class _EntryPoint:
    """What importlib.metadata.entry_points yields, with load() returning `target` (None: a broken plugin)."""

    def __init__(self, name: str, value: str, target=None):
        self.name, self.value, self.group, self.target = name, value, "nnkd.teachers", target

    def load(self):
        if self.target is None:
            raise ModuleNotFoundError(f"No module named '{self.value.split(':')[0]}'")
        return self.target


@pytest.fixture
def registry(monkeypatch):
    """The teacher registry with the built-in families and no installed plugins; restored after the test."""
    from nnkd.teachers import registry

    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    registry._load_builtins()
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_PLUGINS_DONE", set())
    return registry


def test_a_second_registration_of_a_name_warns_and_the_first_stays(registry):
    def first(path, options, **_):
        """The first builder."""
        return _Probe()

    def second(path, options, **_):
        """The second builder."""
        return _Probe()

    assert registry.register_teacher("twice", first, options={"slices": 8}) is first
    with pytest.warns(registry.TeacherRegistryWarning,
                      match=r"'twice' is registered twice: keeping .*\.first .*ignoring .*\.second"):
        decorated = registry.register_teacher("twice", options={"slices": 2})(second)
    assert decorated is second
    assert registry.family_summary("twice") == "The first builder."
    assert registry.family_options("twice") == {"slices": 8}
    with pytest.warns(registry.TeacherRegistryWarning, match=r"'sam' is registered twice: keeping .*build_sam"):
        registry.register_teacher("sam", second)
    assert registry.family_summary("sam").startswith("Segment Anything")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.register_teacher("twice", first, options={"slices": 8})  # the same registration again: silent


def test_a_plugin_named_like_a_built_in_warns_and_is_skipped_unloaded(registry, monkeypatch):
    def build(path, options, **_):
        """A plugin with options."""
        return _Probe()

    build.options = {"slices": 8}
    plugins = [_EntryPoint("sam", "other_sam:build"), _EntryPoint("mine", "mine:build", build)]
    monkeypatch.setattr(registry, "entry_points", lambda group: plugins)
    with pytest.warns(registry.TeacherRegistryWarning,
                      match=r"plugin 'sam' \(other_sam:build\) has the name of a built-in family and is skipped"):
        families = registry.list_teachers()
    assert "mine" in families and registry.family_summary("sam").startswith("Segment Anything")
    assert registry.family_options("mine") == {"slices": 8}  # a plugin's defaults: its builder's `options`
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.list_teachers()  # each plugin is looked at once
    plugins.append(_EntryPoint("broken", "nnkd_broken_plugin:build"))
    for _ in range(2):
        with pytest.raises(NnkdError, match=r"teacher plugin 'broken' \(nnkd_broken_plugin:build\) fails to load"):
            registry.list_teachers()


def test_options_are_parsed_once_and_the_builder_gets_typed_values(registry, monkeypatch):
    import importlib

    received, parsed = [], []
    parse = registry.parse_options
    monkeypatch.setattr(registry, "parse_options", lambda *args: parsed.append(args[0]) or parse(*args))

    @registry.register_teacher("typed", options={"slices": 8, "blocks": (), "scale": 1.0, "half": False, "name": None})
    def build(path, options, fold=None, device="cpu", **_):
        """Records its options."""
        received.append((path, options, fold))
        return _Probe()

    teacher = create_teacher("typed:/weights.pt?slices=4&blocks=1,3&half=yes", fold=2)
    assert received == [("/weights.pt", {"slices": 4, "blocks": (1, 3), "scale": 1.0, "half": True, "name": None}, 2)]
    assert type(received[0][1]["slices"]) is int and parsed == ["typed"] and teacher.spec.startswith("typed:")
    with pytest.raises(NnkdError, match="unknown option.*colour for typed teacher"):
        create_teacher("typed:/weights.pt?colour=red")
    assert len(received) == 1  # a bad option stops before the builder
    for module in registry.BUILTIN_MODULES:  # the built-in builders leave the parsing to create_teacher
        assert not hasattr(importlib.import_module(module), "parse_options"), module
    assert registry.family_options("sam") == registry.family_options("medsam") == {"blocks": (), "slices": 8,
                                                                                   "variant": ""}
    assert (registry.family_options("dinov2")["size"], registry.family_options("rad-dino")["size"]) == (224, 518)


def test_nnkd_teachers_lists_each_familys_options_without_building_a_teacher(registry, monkeypatch, capsys):
    import dataclasses

    from nnkd.cli import teachers as cli

    def never(*args, **kwargs):
        raise AssertionError("listing the families built a teacher or loaded weights")

    for name, family in list(registry._FAMILIES.items()):
        registry._FAMILIES[name] = dataclasses.replace(family, builder=never)
    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(torch.jit, "load", never)
    cli.main([])
    lines = capsys.readouterr().out.splitlines()
    nnunet = lines.index(next(line for line in lines if line.startswith("nnunet ")))
    assert lines[nnunet + 1].split() == ["options:", "fold=", "folds=", "checkpoint=checkpoint_final.pth",
                                         "configuration="]
    sam = lines.index(next(line for line in lines if line.startswith("sam ")))
    assert lines[sam + 1].split() == ["options:", "blocks=", "slices=8", "variant="]
    assert lines[lines.index(next(line for line in lines if line.startswith("tuned "))) + 1].split() == [
        "options:", "none"]
    cli.main(["--json"])
    listed = json.loads(capsys.readouterr().out)
    assert listed["sam"] == {"summary": registry.family_summary("sam"),
                             "options": {"blocks": [], "slices": 8, "variant": ""}}
    assert listed["deepbet"]["options"] == {"size": [], "zoom": 1.0, "axes": [], "probe": 64}


def test_teachers_teach_in_bf16_where_training_runs_in_bf16_and_return_float32(monkeypatch):
    """Teacher.infer, what every trainer's teach calls: bf16 autocast on the CPU when nnkd_cpu_bf16 asks for it
    (auto: CPUs with AVX512-BF16 / AMX-BF16), float32 results close to the float32 pass; 0 is the plain pass."""
    from nnkd.devices import cpu_bf16, cpu_computes_bf16

    teacher = create_teacher("deepbet").freeze()
    x = torch.randn(1, 1, 40, 36, 44, generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("nnkd_cpu_bf16", "0")
    assert not cpu_bf16(torch.device("cpu"))
    plain = teacher.infer(x)
    with torch.no_grad():
        reference = teacher(x)
    assert torch.equal(plain.logits, reference.logits)
    monkeypatch.setenv("nnkd_cpu_bf16", "1")
    assert cpu_bf16(torch.device("cpu")) and not cpu_bf16(torch.device("cuda"))
    low = teacher.infer(x)
    assert low.logits.dtype == torch.float32 and all(f.dtype == torch.float32 for f in low.features)
    assert not low.logits.requires_grad
    assert not torch.equal(low.logits, reference.logits)  # it did run in bf16
    agree = (low.logits.argmax(1) == reference.logits.argmax(1)).float().mean()
    assert agree > 0.99, float(agree)
    for a, b in zip(low.features, reference.features):
        assert (a - b).norm() / b.norm() < 0.05
    monkeypatch.setenv("nnkd_cpu_bf16", "auto")
    assert cpu_bf16(torch.device("cpu")) == cpu_computes_bf16()
    monkeypatch.setenv("nnkd_cpu_bf16", "yes")
    with pytest.raises(NnkdError, match="nnkd_cpu_bf16=yes is not auto, 0 or 1"):
        teacher.infer(x)
