"""Method hyper-parameters: typed by their defaults on the trainer class, constrained by `Rule`s declared beside
them, coerced from `--hp` text and checked in one place before a run writes anything (as peft's typed configs
are validated when they are built)."""

import math
from dataclasses import dataclass

from nnkd.errors import NnkdError


@dataclass(frozen=True)
class Rule:
    """What values a hyper-parameter may take, beyond its default's type."""
    choices: tuple | None = None  # one of these
    minimum: float | None = None  # at least this (each item, for a tuple)
    positive: bool = False  # more than 0
    per_teacher: bool = False  # a tuple with one value per --teacher (None: a default for each)
    per_stage_of: str | None = None  # a tuple with one value per student stage named by that setting
    stages: bool = False  # student encoder stage indices

    def check(self, name: str, value, teachers: int, stage_count: int | None, settings: dict) -> None:
        if value is None:
            return
        items = list(value) if isinstance(value, (tuple, list)) else [value]
        if self.choices is not None and value not in self.choices:
            raise NnkdError(f"{name} '{value}' is unknown", f"use one of {', '.join(map(str, self.choices))}")
        for item in items:
            if self.positive and not item > 0:
                raise NnkdError(f"{name} {value} must be positive", f"e.g. --hp {name}=1")
            if self.minimum is not None and item < self.minimum:
                raise NnkdError(f"{name} {value} must be at least {self.minimum:g}", f"e.g. --hp {name}={self.minimum:g}")
        if self.per_teacher and len(items) != teachers:
            raise NnkdError(f"{name} has {len(items)} value(s) for {teachers} teacher(s)",
                            "give one value per --teacher, in the same order")
        if self.stages and stage_count is not None:
            wrong = [s for s in items if not 0 <= int(s) < stage_count]
            if wrong:
                raise NnkdError(f"{name} names stage(s) {', '.join(map(str, wrong))}, the student has stages "
                                f"0–{stage_count - 1}", f"give indices below {stage_count}")
        if self.per_stage_of is not None:
            chosen = settings.get(self.per_stage_of)
            count = len(chosen) if chosen is not None else None if stage_count is None else stage_count - 1
            if count is not None and len(items) != count:
                raise NnkdError(f"{name} has {len(items)} value(s) for {count} distilled stage(s)",
                                f"give one weight per stage in {self.per_stage_of}")


def collect_rules(cls) -> dict[str, Rule]:
    """The rules a trainer class and its bases (mixins included) declare in `hyperparameter_rules`."""
    rules = {}
    for klass in reversed(cls.__mro__):
        rules.update(klass.__dict__.get("hyperparameter_rules", {}))
    return rules


def check_settings(cls, settings: dict, teachers: int, stage_count: int | None = None) -> None:
    """Every number among the values finite (`--hp kd_weight=inf` or `=nan` would train on a NaN loss from the
    first step), then every declared rule of the class on `settings` (all hyper-parameters, by name)."""
    for name, value in settings.items():
        items = value if isinstance(value, (tuple, list)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise NnkdError(f"hyper-parameter {name}={value} is not a finite number",
                            f"give a finite value, e.g. --hp {name}=1")
    for name, rule in collect_rules(cls).items():
        if name in cls.hyperparameters:
            rule.check(name, settings.get(name), teachers, stage_count, settings)


def coerce_hyperparameter(trainer_or_class, name: str, value):
    """Convert a --hp value to the type of the trainer's default for that attribute."""
    if name not in trainer_or_class.hyperparameters:
        raise NnkdError(f"{getattr(trainer_or_class, '__name__', type(trainer_or_class).__name__)} has no "
                        f"hyper-parameter '{name}'",
                        f"it takes {', '.join(trainer_or_class.hyperparameters) or 'none'}")
    default = getattr(trainer_or_class, name)
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, (tuple, list)) or default is None:
            if not isinstance(value, str):
                return value
            items = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(int(v) if v.lstrip("-").isdigit() else float(v) for v in items)
        return type(default)(value)
    except (TypeError, ValueError) as e:
        raise NnkdError(f"hyper-parameter {name}={value!r} is not a valid {type(default).__name__}",
                        f"give a value like {default!r}") from e
