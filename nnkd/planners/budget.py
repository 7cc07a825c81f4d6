"""Budgets: how large a student may be, relative to its teacher plan or in absolute numbers."""

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nnkd.errors import NnkdError

if TYPE_CHECKING:  # keeps the console scripts' argument parsing free of torch imports
    from nnkd.planners.network_cost import NetworkCost

# A preset allows this fraction of the teacher plan's parameters and of its GFLOPs per patch.
PRESETS = {"tiny": 1 / 16, "small": 1 / 6, "medium": 1 / 2}
# Any other fraction is written 1/N (N ≥ 2): `--budget 1/64`; its plans are named nnKDPlans_fracN.
_FRACTION = re.compile(r"^1/([1-9]\d*)$")
_FRACTION_NAME = re.compile(r"^frac([1-9]\d*)$")
_ABSOLUTE_NAME = re.compile(r"^(?:params(\d+))?-?(?:gflops(\d+(?:\.\d+)?))?-?"
                            r"(?:latency(\d+(?:\.\d+)?)ms(-cuda)?(-onnx|-fast)?)?$")
LATENCY_DEVICES = ("cpu", "cuda")
# "fast": as nnkd_predict runs it on the CPU, the fastest of its fast path's candidates (nnkd.network_runtimes)
LATENCY_RUNTIMES = ("torch", "onnx", "fast")


def default_latency_runtime(device: str) -> str:
    """How nnkd_predict runs a network on `device`: its fast path on the CPU, torch on a GPU."""
    return "torch" if device == "cuda" else "fast"


def check_latency_runtime(device: str, runtime: str) -> None:
    """The fast path is nnkd_predict's on the CPU: a latency on a GPU is measured in torch or ONNX Runtime."""
    if device == "cuda" and runtime == "fast":
        raise NnkdError("--latency-runtime fast is nnkd_predict's CPU fast path; on a GPU nnkd_predict runs torch",
                        "use --latency-runtime torch (or onnx) with --latency-device cuda")


def preset_fraction(preset: str) -> float | None:
    """The fraction of the teacher a preset or a `1/N` budget allows; None for anything else."""
    if preset in PRESETS:
        return PRESETS[preset]
    match = _FRACTION.match(preset or "")
    return 1 / int(match.group(1)) if match and int(match.group(1)) >= 2 else None


def _number(value: float) -> str:
    return format(value, "f").rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Budget:
    preset: str | None = None
    max_params: int | None = None
    max_gflops: float | None = None
    max_latency_ms: float | None = None  # one patch, measured on the planning machine
    latency_device: str = "cpu"
    # None: as nnkd_predict runs on that device — "fast" on the CPU, "torch" on cuda
    latency_runtime: str | None = None

    def __post_init__(self):
        if self.latency_runtime is None:
            object.__setattr__(self, "latency_runtime", default_latency_runtime(self.latency_device))
        if self.preset is not None:
            if _FRACTION_NAME.match(self.preset):  # the plans name of a fraction: frac64 is 1/64
                object.__setattr__(self, "preset", "1/" + self.preset.removeprefix("frac"))
            if preset_fraction(self.preset) is None:
                raise NnkdError(f"unknown budget '{self.preset}'",
                                f"use one of {', '.join(PRESETS)}, a fraction 1/N with N ≥ 2 (e.g. 1/64), or "
                                "--max-params/--max-gflops")
            if self.max_params is not None or self.max_gflops is not None or self.max_latency_ms is not None:
                raise NnkdError("a preset budget and --max-params/--max-gflops/--max-latency were both given",
                                "give one of them")
        elif self.max_params is None and self.max_gflops is None and self.max_latency_ms is None:
            raise NnkdError("no budget given", f"pass --budget {'|'.join(PRESETS)}, --max-params N, --max-gflops G "
                                               "or --max-latency MS")
        if self.max_params is not None and self.max_params <= 0:
            raise NnkdError(f"--max-params {self.max_params} is not positive", "give a parameter count like 1000000")
        if self.max_gflops is not None and not self.max_gflops > 0:
            raise NnkdError(f"--max-gflops {self.max_gflops} is not positive", "give GFLOPs per patch like 5")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise NnkdError(f"--max-latency {self.max_latency_ms} is not positive", "give milliseconds per patch like 50")
        if self.latency_device not in LATENCY_DEVICES or self.latency_runtime not in LATENCY_RUNTIMES:
            raise NnkdError(f"unknown latency device/runtime {self.latency_device}/{self.latency_runtime}",
                            f"use --latency-device {'|'.join(LATENCY_DEVICES)} and "
                            f"--latency-runtime {'|'.join(LATENCY_RUNTIMES)}")
        check_latency_runtime(self.latency_device, self.latency_runtime)

    @property
    def name(self) -> str:
        """The part of the plans identifier after nnKDPlans_ (no '__', which nnU-Net uses as a separator)."""
        if self.preset:
            return self.preset if self.preset in PRESETS else "frac" + self.preset.split("/")[1]
        parts = []
        if self.max_params is not None:
            parts.append(f"params{self.max_params}")
        if self.max_gflops is not None:
            parts.append("gflops" + _number(self.max_gflops))
        if self.max_latency_ms is not None:
            parts.append(f"latency{_number(self.max_latency_ms)}ms"
                         + ("-cuda" if self.latency_device == "cuda" else "")
                         + ("" if self.latency_runtime == "torch" else f"-{self.latency_runtime}"))
        return "-".join(parts)

    @classmethod
    def from_name(cls, name: str) -> "Budget":
        """Inverse of `name`, for commands that take `--budget` after planning."""
        if name in PRESETS:
            return cls(preset=name)
        if _FRACTION_NAME.match(name) or _FRACTION.match(name):
            return cls(preset="1/" + name.removeprefix("frac").removeprefix("1/"))
        match = _ABSOLUTE_NAME.match(name)
        if not name or not match or not any(match.groups()):
            raise NnkdError(f"unknown budget '{name}'",
                            f"use one of {', '.join(PRESETS)}, 1/N or a planned name like params2000000 or frac64")
        params, gflops, latency, cuda, runtime = match.groups()
        return cls(max_params=int(params) if params else None, max_gflops=float(gflops) if gflops else None,
                   max_latency_ms=float(latency) if latency else None, latency_device="cuda" if cuda else "cpu",
                   latency_runtime=runtime[1:] if runtime else "torch")

    def limits(self, teacher: "NetworkCost") -> tuple[float, float]:
        """(max parameters, max GFLOPs per patch) for a student of this teacher; inf where unbounded."""
        if self.preset:
            fraction = preset_fraction(self.preset)
            return teacher.params * fraction, teacher.gflops * fraction
        return (float(self.max_params) if self.max_params is not None else float("inf"),
                float(self.max_gflops) if self.max_gflops is not None else float("inf"))

    def shrink_problem(self, teacher: "NetworkCost") -> NnkdError | None:
        """Absolute limits (--max-params, --max-gflops) at or above the teacher's size would plan the teacher
        itself as the student (1.00×): the refusal, or None where the budget shrinks it (presets and 1/N always
        do; a latency budget is judged by measurement)."""
        if self.preset or self.max_latency_ms is not None:
            return None
        given = {flag: v for flag, v in {"--max-params": (self.max_params, teacher.params, "parameters"),
                                         "--max-gflops": (self.max_gflops, teacher.gflops, "GFLOPs per patch")}.items()
                 if v[0] is not None}
        if not given or any(limit < size for limit, size, _ in given.values()):
            return None
        shown = ", ".join(f"{flag} {limit:g} ≥ the teacher's {size:g} {unit}"
                          for flag, (limit, size, unit) in given.items())
        return NnkdError(f"{shown}: the student would be the teacher",
                         f"give a limit below the teacher's (e.g. --max-params {teacher.params // 16}) or a preset "
                         "(--budget tiny)")

    def to_json(self) -> dict:
        return {"name": self.name, "preset": self.preset, "fraction_of_teacher": preset_fraction(self.preset),
                "max_params": self.max_params, "max_gflops": self.max_gflops, "max_latency_ms": self.max_latency_ms,
                "latency_device": self.latency_device if self.max_latency_ms else None,
                "latency_runtime": self.latency_runtime if self.max_latency_ms else None}
