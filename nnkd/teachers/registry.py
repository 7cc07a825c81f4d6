"""Teacher registry in the style of timm: builder functions by family name, plus entry-point plugins.

A spec is `family:PATH` with optional `?key=value&key=value` options, e.g.
`nnunet:/results/Dataset990_Synthetic/nnUNetTrainer__nnUNetPlans__3d_fullres?fold=all` or
`sam:/ckpt/sam_vit_b_01ec64.pth?variant=vit_b&slices=8`. Families with a built-in checkpoint take the
bare name (`deepbet`).

Each family is registered once with its builder, the defaults of its options (which also give each
option's type) and a one-line summary (the builder's docstring). `create_teacher` parses a spec's options
against those defaults, once, and hands the builder the typed dict; `family_options` reads the defaults
without building anything. Built-in families are registered by the modules in BUILTIN_MODULES; plugins
through the `nnkd.teachers` entry-point group, whose entry point names a builder function that carries its
defaults in an `options` attribute. A second registration of a name, or a plugin named like a built-in,
is a TeacherRegistryWarning and the first registration stays.
"""

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from nnkd.errors import NnkdError
from nnkd.teacher_spec import TeacherSpec
from nnkd.teachers.base import Teacher

ENTRY_POINT_GROUP = "nnkd.teachers"
BUILTIN_MODULES = ("nnkd.teachers.nnunet", "nnkd.teachers.torchscript", "nnkd.teachers.sam",
                   "nnkd.teachers.sam_med3d", "nnkd.teachers.hf_vision", "nnkd.teachers.medclip",
                   "nnkd.teachers.tuned")


class TeacherRegistryWarning(UserWarning):
    """A family registered twice, or a plugin that would shadow a built-in family."""


@dataclass(frozen=True)
class TeacherFamily:
    """A registered family: its builder, the defaults of its options and the line nnkd_teachers lists."""
    name: str
    builder: Callable[..., Teacher]
    options: Mapping[str, Any]
    summary: str
    source: str  # the builder's module, or "entry point <value>" for a plugin

    @property
    def builtin(self) -> bool:
        return self.source in BUILTIN_MODULES


_FAMILIES: dict[str, TeacherFamily] = {}
_PLUGINS_DONE: set[tuple[str, str]] = set()  # entry points (name, value) registered or skipped


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


def _describe_builder(builder) -> str:
    module = getattr(builder, "__module__", None) or "?"
    return f"{module}.{getattr(builder, '__qualname__', None) or type(builder).__qualname__}"


def _checked_defaults(name: str, options) -> MappingProxyType:
    """The defaults as a read-only dict, after checking parse_options can parse each option's type."""
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise TypeError(f"options of teacher family '{name}' must be a dict of defaults, not {type(options).__name__}")
    for key, default in options.items():
        typed = default is None or isinstance(default, (bool, int, float, str))
        ints = isinstance(default, tuple) and all(isinstance(v, int) for v in default)
        if not isinstance(key, str) or not (typed or ints):
            raise TypeError(f"option {key!r}={default!r} of teacher family '{name}' is not a str, bool, int, "
                            "float, tuple of ints or None")
    return MappingProxyType(dict(options))


def _summary(builder) -> str:
    doc = (getattr(builder, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _add(name: str, builder, options, source: str, stacklevel: int) -> None:
    defaults = _checked_defaults(name, options)
    first = _FAMILIES.get(name)
    if first is not None:
        if first.builder is builder and dict(first.options) == dict(defaults):
            return  # the same registration again (a re-imported module, one plugin found twice)
        warnings.warn(f"teacher family '{name}' is registered twice: keeping {_describe_builder(first.builder)} "
                      f"(from {first.source}), ignoring {_describe_builder(builder)} (from {source})",
                      TeacherRegistryWarning, stacklevel=stacklevel)
        return
    _FAMILIES[name] = TeacherFamily(name, builder, defaults, _summary(builder), source)


def register_teacher(name: str, builder: Callable[..., Teacher] | None = None, *,
                     options: Mapping[str, Any] | None = None):
    """Register the builder of a teacher family, as a call or as a decorator:

        register_teacher("my-encoder", build, options={"slices": 8})

        @register_teacher("my-encoder", options={"slices": 8})
        def build(path, options, fold=None, device="cpu", **_) -> Teacher: ...

    `options` are the defaults of the family's options; their types (int, float, bool, str, a tuple of ints;
    None for a str without default) are how create_teacher parses a spec's values, once, before it calls
    `builder(path, options=<typed dict>, fold=…, device=…)`. The builder's first docstring line is the
    summary nnkd_teachers lists. A name registered before stays: a second registration warns
    (TeacherRegistryWarning) and is ignored. Returns the builder.
    """
    if builder is None:
        def wrap(fn):
            _register(name, fn, options)
            return fn
        return wrap
    _register(name, builder, options)
    return builder


def _register(name: str, builder, options) -> None:
    source = getattr(builder, "__module__", None) or "?"
    if source not in BUILTIN_MODULES:
        _load_builtins()  # the built-in families come first, so another registration cannot take their names
    _add(name, builder, options, source, stacklevel=4)  # the warning points at the registering code


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        import_module(module)


def _load_families() -> None:
    _load_builtins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in _PLUGINS_DONE:
            continue
        first = _FAMILIES.get(ep.name)
        if first is not None and first.builtin:
            _PLUGINS_DONE.add((ep.name, ep.value))
            warnings.warn(f"teacher plugin '{ep.name}' ({ep.value}) has the name of a built-in family and is "
                          f"skipped; the built-in {ep.name} ({_describe_builder(first.builder)}) stays",
                          TeacherRegistryWarning, stacklevel=3)
            continue
        try:
            builder = ep.load()
            if not callable(builder):
                raise TypeError(f"{ep.value} is a {type(builder).__name__}, not a builder function")
            options = _checked_defaults(ep.name, getattr(builder, "options", None))
        except Exception as e:  # a broken plugin must not hide the built-in families
            raise NnkdError(f"teacher plugin '{ep.name}' ({ep.value}) fails to load: {e}",
                            "fix or uninstall the package that provides it") from e
        _PLUGINS_DONE.add((ep.name, ep.value))
        _add(ep.name, builder, options, f"entry point {ep.value}", stacklevel=3)


def list_teachers() -> list[str]:
    _load_families()
    return sorted(_FAMILIES)


def _family(name: str) -> TeacherFamily:
    families = list_teachers()
    if name not in _FAMILIES:
        raise NnkdError(f"unknown teacher family '{name}'", f"use one of {', '.join(families)}")
    return _FAMILIES[name]


def family_summary(family: str) -> str:
    """First line of the family builder's docstring."""
    return _family(family).summary


def family_options(family: str) -> dict:
    """The family's options with their defaults, as registered; nothing is built or loaded."""
    return dict(_family(family).options)


def create_teacher(spec: str | TeacherSpec, **context) -> Teacher:
    """Build a frozen teacher from a spec; `context` (fold, device) fills what the spec leaves open.

    The spec's options are parsed here, once, against the family's defaults; the builder gets the typed dict."""
    spec = spec if isinstance(spec, TeacherSpec) else TeacherSpec.parse(spec)
    family = _family(spec.family)
    options = parse_options(spec.family, spec.options, family.options)
    teacher = family.builder(spec.path, options=options, **context)
    teacher.spec = spec.text
    return teacher.freeze()
