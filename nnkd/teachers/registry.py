"""Teacher registry in the style of timm: builder functions by family name, plus entry-point plugins.

A spec is `family:PATH` with optional `?key=value&key=value` options, e.g.
`nnunet:/results/Dataset990_Synthetic/nnUNetTrainer__nnUNetPlans__3d_fullres?fold=all` or
`sam:/ckpt/sam_vit_b_01ec64.pth?variant=vit_b&slices=8`. Families with a built-in checkpoint take the
bare name (`deepbet`).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from urllib.parse import parse_qsl

from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher

ENTRY_POINT_GROUP = "nnkd.teachers"
BUILTIN_MODULES = ("nnkd.teachers.nnunet", "nnkd.teachers.torchscript", "nnkd.teachers.sam",
                   "nnkd.teachers.sam_med3d", "nnkd.teachers.hf_vision", "nnkd.teachers.medclip",
                   "nnkd.teachers.tuned")
_BUILDERS: dict[str, Callable[..., Teacher]] = {}


@dataclass(frozen=True)
class TeacherSpec:
    family: str
    path: str
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "TeacherSpec":
        family, sep, rest = text.partition(":")
        if "?" in family:  # a bare family with options, e.g. deepbet?size=128,128,128
            family, sep, rest = text.partition("?")
            rest = "?" + rest
        if not family or (sep and not rest):
            raise NnkdError(f"teacher spec '{text}' is not of the form family:PATH[?key=value&…]",
                            f"e.g. nnunet:/path/to/model_folder; families: {', '.join(list_teachers())}")
        path, _, query = rest.partition("?")
        try:
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
        except ValueError as e:
            raise NnkdError(f"teacher spec '{text}' has malformed options '{query}'",
                            "write options as ?key=value&key=value") from e
        return cls(family, path, options, text)


def parse_options(family: str, options: dict[str, str], defaults: dict) -> dict:
    """Typed options of a family: each value is converted to its default's type (int, float, bool, a
    tuple of ints written `1,2,3`, or str when the default is None or a str); unknown keys are errors."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise NnkdError(f"unknown option(s) {', '.join(sorted(unknown))} for {family} teacher",
                        f"{family} teachers take {', '.join(sorted(defaults)) or 'no options'}")
    parsed = dict(defaults)
    for key, text in options.items():
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                parsed[key] = text.lower() in ("1", "true", "yes")
            elif isinstance(default, (int, float)):
                parsed[key] = type(default)(text)
            elif isinstance(default, tuple):
                parsed[key] = tuple(int(v) for v in text.split(",") if v != "")
            else:
                parsed[key] = text
        except ValueError as e:
            kind = {bool: "true or false", int: "an integer", float: "a number", tuple: "integers like 1,2,3"}
            raise NnkdError(f"option {key}={text} of {family} teacher is not {kind[type(default)]}",
                            f"e.g. {key}={','.join(map(str, default)) if isinstance(default, tuple) else default}"
                            ) from e
    return parsed


def register_teacher(name: str):
    """Decorator: register a builder `fn(path, options, fold=None, device="cpu") -> Teacher` by family."""
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def _load_families() -> None:
    for module in BUILTIN_MODULES:
        import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _BUILDERS:
            try:
                _BUILDERS[ep.name] = ep.load()
            except Exception as e:  # a broken plugin must not hide the built-in families
                raise NnkdError(f"teacher plugin '{ep.name}' ({ep.value}) fails to load: {e}",
                                "fix or uninstall the package that provides it") from e


def list_teachers() -> list[str]:
    _load_families()
    return sorted(_BUILDERS)


def family_summary(family: str) -> str:
    """First line of the family builder's docstring."""
    _load_families()
    doc = (_BUILDERS[family].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def create_teacher(spec: str | TeacherSpec, **context) -> Teacher:
    """Build a frozen teacher from a spec; `context` (fold, device) fills what the spec leaves open."""
    spec = spec if isinstance(spec, TeacherSpec) else TeacherSpec.parse(spec)
    families = list_teachers()
    if spec.family not in _BUILDERS:
        raise NnkdError(f"unknown teacher family '{spec.family}'", f"use one of {', '.join(families)}")
    teacher = _BUILDERS[spec.family](spec.path, options=dict(spec.options), **context)
    teacher.spec = spec.text
    return teacher.freeze()
