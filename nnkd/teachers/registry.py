"""Teacher registry in the style of timm: builder functions by family name, plus entry-point plugins.

A spec is `family:PATH` with optional `?key=value&key=value` options, e.g.
`nnunet:/results/Dataset990_Synthetic/nnUNetTrainer__nnUNetPlans__3d_fullres?fold=all`.
"""

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable
from urllib.parse import parse_qsl

from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher

ENTRY_POINT_GROUP = "nnkd.teachers"
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
        if not sep or not family or not rest:
            raise NnkdError(f"teacher spec '{text}' is not of the form family:PATH[?key=value&…]",
                            f"e.g. nnunet:/path/to/model_folder; families: {', '.join(list_teachers())}")
        path, _, query = rest.partition("?")
        try:
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
        except ValueError as e:
            raise NnkdError(f"teacher spec '{text}' has malformed options '{query}'",
                            "write options as ?key=value&key=value") from e
        return cls(family, path, options, text)


def register_teacher(name: str):
    """Decorator: register a builder `fn(path, **options) -> Teacher` under a family name."""
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def _load_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _BUILDERS:
            _BUILDERS[ep.name] = ep.load()


def list_teachers() -> list[str]:
    from nnkd.teachers import nnunet  # noqa: F401  (registers the built-in families)

    _load_plugins()
    return sorted(_BUILDERS)


def create_teacher(spec: str | TeacherSpec, **context) -> Teacher:
    """Build a frozen teacher from a spec; `context` (e.g. fold) fills options the spec leaves open."""
    spec = spec if isinstance(spec, TeacherSpec) else TeacherSpec.parse(spec)
    families = list_teachers()
    if spec.family not in _BUILDERS:
        raise NnkdError(f"unknown teacher family '{spec.family}'", f"use one of {', '.join(families)}")
    teacher = _BUILDERS[spec.family](spec.path, options=dict(spec.options), **context)
    teacher.spec = spec.text
    return teacher.freeze()
