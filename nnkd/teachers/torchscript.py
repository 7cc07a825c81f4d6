"""TorchScript models as teachers, and `deepbet`, the pretrained brain-extraction network the deepbet
package ships.

Scripted modules take no forward hooks, so stage features from named child modules (option
`features=down0,down1`) are read by copying the scripted forward graph and returning those children's
outputs beside the model's own output. `axes` permutes the patch's spatial axes into the model's order
(deepbet expects RAS x, y, z; nnU-Net arrays read by SimpleITK are z, y, x: `axes=2,1,0`) and `zoom`
resamples the patch by a factor before the model (e.g. 1.6 for a model trained at 1 mm on 1.6 mm data);
features and logits come back in the patch's axis order, logits at the patch's size (nnU-Net's
transpose_forward decides the patch's order: for deepbet on data nnU-Net transposed by [1, 0, 2],
`axes=2,0,1`). The output gives the logits (a softmax output is turned back into logits by its log) once
`labels=` names its channels. Channels and strides of every stage are measured on a probe input when the
teacher is built.
"""

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.teachers.bridge import InputBridge, crop_to_input, pad_to_multiple
from nnkd.teachers.registry import register_teacher

DEFAULTS = {"features": "", "labels": "", "dims": 3, "channels": 1, "output": "auto", "intensity": "none",
            "mean": 0.0, "std": 1.0, "size": (), "zoom": 1.0, "axes": (), "probe": 64}
# deepbet's own `normalize`: the 0.5–99.5 percentile window onto [0, 1], standardised, then × 0.226 + 0.449
DEEPBET = {"features": "down0,down1,down2,down3", "labels": "background,brain", "output": "softmax",
           "intensity": "unit-zscore", "mean": -0.449 / 0.226, "std": 1 / 0.226}
DEEPBET_OPTIONS = {k: v for k, v in DEFAULTS.items() if k in ("size", "zoom", "axes", "probe")}  # the rest is fixed


def _call_path(node) -> str | None:
    """Dotted child name of a `prim::CallMethod` on a (nested) attribute of self, e.g. 'encoder.stage1'."""
    names, value = [], node.inputsAt(0)
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().inputsAt(0)
    return ".".join(reversed(names)) if names and value.debugName().startswith("self") else None


def forward_with_children(model: torch.jit.ScriptModule, names: list[str]):
    """A function `f(model._c, x) -> (output, *child outputs)` built from a copy of `model.forward`'s graph."""
    graph = model.graph.copy()
    calls = {}
    for node in graph.nodes():
        if node.kind() == "prim::CallMethod" and node.s("name") == "forward":
            path = _call_path(node)
            if path is not None:
                calls.setdefault(path, node.output())
    missing = [n for n in names if n not in calls]
    if missing:
        raise NnkdError(f"the scripted forward never calls {', '.join(missing)}",
                        f"name children its forward calls: {', '.join(calls) or 'none'}")
    ret = graph.return_node()
    values = [ret.inputsAt(0)] + [calls[n] for n in names]
    bundle = graph.create("prim::TupleConstruct", values)
    bundle.insertBefore(ret)
    bundle.output().setType(torch._C.TupleType([v.type() for v in values]))
    ret.replaceInput(0, bundle.output())
    return torch._C._create_function_from_graph("forward_with_children", graph)


class TorchScriptTeacher(Teacher):
    def __init__(self, model: torch.jit.ScriptModule, options: dict):
        super().__init__()
        self.model = model
        self.spatial_dims = options["dims"]
        self.in_channels = options["channels"]
        self.bridge = InputBridge(channels=self.in_channels, size=options["size"] or None,
                                  scale=options["intensity"], mean=(options["mean"],), std=(options["std"],))
        self.zoom = options["zoom"]
        self.axes = tuple(options["axes"]) or tuple(range(self.spatial_dims))
        if sorted(self.axes) != list(range(self.spatial_dims)) or self.zoom <= 0:
            raise NnkdError(f"axes={','.join(map(str, options['axes']))} or zoom={self.zoom} is not valid",
                            f"axes is a permutation of 0…{self.spatial_dims - 1} (e.g. 2,1,0), zoom a positive factor")
        self.feature_names = [n for n in options["features"].split(",") if n]
        self._forward = forward_with_children(model, self.feature_names)
        self.output_kind = options["output"]
        self._measure(options["probe"])
        names = [n for n in options["labels"].split(",") if n]
        if names and len(names) != self.output_channels:
            raise NnkdError(f"labels= names {len(names)} channel(s), the model outputs {self.output_channels}",
                            "give one label name per output channel, background first")
        self.labels = {name: i for i, name in enumerate(names)} if names else None

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        output, *features = self._forward(self.model._c, x)
        return output, features

    def _measure(self, probe: int) -> None:
        """Stage channels and strides, divisibility and output kind from one forward pass on noise."""
        shape = (1, self.in_channels) + (probe,) * self.spatial_dims
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                device = next(iter([*self.model.parameters(), *self.model.buffers()]), x).device
                output, features = self._run(x.to(device))
        except Exception as e:
            reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            raise NnkdError(f"the scripted model fails on a probe input of shape {list(shape)}: {reason}",
                            "set ?dims=, ?channels= or a ?probe= size the model divides") from e
        self.feature_channels = [f.shape[1] for f in features]
        self.feature_strides = [tuple(probe // s for s in f.shape[2:]) for f in features]
        self.divisible_by = tuple(max([1] + [s[i] for s in self.feature_strides]) for i in range(self.spatial_dims))
        self.output_channels = output.shape[1]
        if self.output_kind == "auto":
            probabilities = output.min() >= 0 and torch.allclose(output.sum(1), torch.ones(()), atol=1e-3)
            self.output_kind = "softmax" if probabilities else "logits"
        if self.output_kind not in ("logits", "softmax"):
            raise NnkdError(f"output={self.output_kind} is not a known output kind", "use auto, logits or softmax")

    def _to_model_axes(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, *[a + 2 for a in self.axes])

    def _to_patch_axes(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, *[self.axes.index(a) + 2 for a in range(self.spatial_dims)])

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        size = x.shape[2:]
        x = self.bridge(x)
        if self.zoom != 1:
            x = F.interpolate(x, scale_factor=self.zoom, mode="trilinear" if x.ndim == 5 else "bilinear")
        x = self._to_model_axes(x)
        model_size = x.shape[2:]
        output, features = self._run(pad_to_multiple(x, self.divisible_by))
        features = [self._to_patch_axes(f) for f in crop_to_input(features, self.feature_strides, model_size)]
        if not self.has_logits:
            return TeacherOutput(features, None)
        logits = torch.log(output.float().clamp_min(1e-6)) if self.output_kind == "softmax" else output
        logits = self._to_patch_axes(logits[(slice(None), slice(None), *[slice(0, s) for s in model_size])])
        if tuple(logits.shape[2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="trilinear" if logits.ndim == 5 else "bilinear")
        return TeacherOutput(features, logits)


def _load_scripted(path: Path) -> torch.jit.ScriptModule:
    if not path.is_file():
        raise NnkdError(f"TorchScript model {path} not found", "give the path of a file saved with torch.jit.save")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise NnkdError(f"{path} is not a loadable TorchScript model: {str(e).strip().splitlines()[0][:160]}",
                        "save the model with torch.jit.save(torch.jit.script(model), path)") from e


def _build(family: str, path: Path, options: dict, device) -> TorchScriptTeacher:
    teacher = TorchScriptTeacher(_load_scripted(path), options)
    teacher.set_checkpoint(path)
    return teacher.to(device)


@register_teacher("torchscript", options=DEFAULTS)
def torchscript_teacher(path: str, options: dict, device="cpu", **_) -> TorchScriptTeacher:
    """Any TorchScript model; stage features from named children it calls, logits from its output."""
    if not path:
        raise NnkdError("the torchscript teacher needs a file", "write torchscript:/path/model.pt?features=…")
    return _build("torchscript", Path(path).expanduser(), options, device)


def deepbet_model_file() -> Path:
    """model.pt as the deepbet wheel installs it (site-packages/data/models), found without importing deepbet."""
    spec = importlib.util.find_spec("deepbet")
    if spec is None or spec.origin is None:
        raise NnkdError("the deepbet teacher needs the deepbet package", "pip install deepbet (or 'nnkd[dev]')")
    return Path(spec.origin).resolve().parents[1] / "data" / "models" / "model.pt"


@register_teacher("deepbet", options=DEEPBET_OPTIONS)
def deepbet_teacher(path: str, options: dict, device="cpu", **_) -> TorchScriptTeacher:
    """deepbet's pretrained 3D brain-extraction U-Net for T1 MRI (2.1 M parameters, from the deepbet package).

    Its own intensity mapping, labels background/brain; `path` may point to another copy of model.pt."""
    return _build("deepbet", Path(path).expanduser() if path else deepbet_model_file(),
                  DEFAULTS | DEEPBET | options, device)
