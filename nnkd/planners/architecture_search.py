"""Search the student architecture: the most capacity that fits a parameter and GFLOPs budget.

The student keeps the teacher's class, stages, kernel sizes and strides (they follow from the patch size
and spacing nnU-Net planned), and shrinks three things:

- width: every stage's width is the teacher's scaled by base_width / teacher_base_width, rounded to a multiple
  of 8 from 8 channels up (below 8, to an even number): convolutions of such widths run far faster per FLOP on
  CPUs (oneDNN's vector blocks) and GPUs (tensor cores) — nnU-Net's own widths are all multiples of 32;
- max width: the widest stages are capped at 1, 1/2 or 1/4 of the scaled teacher maximum;
- depth: blocks (ResEnc) or convolutions (PlainConv) per encoder stage and convolutions per decoder
  stage are capped at k, for every k up to the teacher's.

For each (cap, encoder depth, decoder depth) the largest base width that fits is found by bisection
(parameters and GFLOPs only grow with width); of those, the student with the most parameters wins, ties
broken by GFLOPs then width, so the result is deterministic.
"""

import copy
import json
from dataclasses import dataclass

from nnkd.errors import NnkdError
from nnkd.planners.network_cost import NetworkCost, build_network, count_conv_gflops, count_params, measure

ENCODER_DEPTH_KEY = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "n_conv_per_stage",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "n_blocks_per_stage",
}
DECODER_DEPTH_KEY = "n_conv_per_stage_decoder"
MAX_WIDTH_FRACTIONS = (1.0, 0.5, 0.25)
MIN_BASE_WIDTH = 4


@dataclass(frozen=True)
class StudentArchitecture:
    architecture: dict  # the plans 'architecture' entry, ready for nnU-Net's get_network_from_plans
    cost: NetworkCost
    base_width: int
    max_width: int
    encoder_depth: tuple[int, ...]
    decoder_depth: tuple[int, ...]
    cap_fraction: float = 1.0  # the widest stages' cap, a fraction of the scaled teacher maximum


def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def _cpu_friendly(width: int) -> int:
    """A stage width of 8 or more rounded to the nearest multiple of 8 (halves up); smaller ones to an even number."""
    return _even(width) if width < 8 else 8 * int(width / 8 + 0.5)


def _capped(depths, k: int) -> tuple[int, ...]:
    return tuple(min(d, k) for d in depths)


_COUNTS: dict[tuple, tuple[dict[tuple, int], dict[tuple, float]]] = {}  # see StudentSearch.__init__


class StudentSearch:
    """Finds the student for one configuration; counts each candidate on the network nnU-Net builds."""

    def __init__(self, teacher_architecture: dict, input_channels: int, num_classes: int, patch_size):
        class_name = teacher_architecture["network_class_name"]
        if class_name not in ENCODER_DEPTH_KEY:
            raise NnkdError(f"the teacher plans use {class_name.rsplit('.', 1)[-1]}, which nnkd cannot shrink",
                            "use teacher plans with PlainConvUNet or ResidualEncoderUNet (nnUNetPlans, ResEnc plans)")
        self.teacher = teacher_architecture
        self.encoder_key = ENCODER_DEPTH_KEY[class_name]
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.patch_size = tuple(patch_size)
        kwargs = teacher_architecture["arch_kwargs"]
        self.teacher_widths = tuple(kwargs["features_per_stage"])
        self.teacher_encoder_depth = tuple(kwargs[self.encoder_key])
        self.teacher_decoder_depth = tuple(kwargs[DECODER_DEPTH_KEY])
        # counts by (widths, encoder depths, decoder depths), shared by every search of this teacher, input and patch
        # in the process: a latency plan or several budgets search the same candidates again
        teacher_key = (json.dumps(teacher_architecture, sort_keys=True, default=str), input_channels, num_classes,
                       self.patch_size)
        self._params, self._gflops = _COUNTS.setdefault(teacher_key, ({}, {}))

    def teacher_cost(self) -> NetworkCost:
        return measure(self.teacher, self.input_channels, self.num_classes, self.patch_size)

    def _widths(self, base: int, cap_fraction: float) -> tuple[int, ...]:
        scale = base / self.teacher_widths[0]
        cap = _even(max(self.teacher_widths) * scale * cap_fraction)
        return tuple(_cpu_friendly(max(base, min(_even(w * scale), cap))) for w in self.teacher_widths)

    def _candidate(self, base: int, cap_fraction: float, enc_k: int, dec_k: int) -> dict:
        arch = copy.deepcopy(self.teacher)
        kwargs = arch["arch_kwargs"]
        kwargs["features_per_stage"] = list(self._widths(base, cap_fraction))
        kwargs[self.encoder_key] = list(_capped(self.teacher_encoder_depth, enc_k))
        kwargs[DECODER_DEPTH_KEY] = list(_capped(self.teacher_decoder_depth, dec_k))
        return arch

    def _fits(self, arch: dict, param_limit: float, gflop_limit: float) -> NetworkCost | None:
        """Counted cost if within both limits. GFLOPs (the slow count) only for candidates whose
        parameters fit."""
        kwargs = arch["arch_kwargs"]
        key = (tuple(kwargs["features_per_stage"]), tuple(kwargs[self.encoder_key]), tuple(kwargs[DECODER_DEPTH_KEY]))
        network = None
        if key not in self._params:
            network = build_network(arch, self.input_channels, self.num_classes)
            self._params[key] = count_params(network)
        if self._params[key] > param_limit:
            return None
        if key not in self._gflops:
            network = network or build_network(arch, self.input_channels, self.num_classes)
            self._gflops[key] = count_conv_gflops(network, self.input_channels, self.patch_size)
        cost = NetworkCost(self._params[key], self._gflops[key])
        return cost if cost.gflops <= gflop_limit else None

    def widened(self, student: StudentArchitecture, param_limit: float, gflop_limit: float, kept: int = 0) -> list:
        """Wider students of `student`'s shape (its max-width cap, encoder and decoder depth) that fit the limits,
        narrowest first, one base width at a time up to the teacher's, with the first `kept` stages at `student`'s
        widths: the finer steps that a measured latency budget is fitted with (the search moves the base width 2
        channels at a time, always in every stage, and may jump between shapes). Keeping the full-resolution stages
        grows the deep, cheap ones alone. With widths rounded to multiples of 8, consecutive base widths often give
        the same network; it is listed once."""
        enc_k, dec_k = max(student.encoder_depth), max(student.decoder_depth)
        narrowest = list(student.architecture["arch_kwargs"]["features_per_stage"])
        wider, seen = [], {tuple(narrowest)}
        for base in range(student.base_width + 1, self.teacher_widths[0] + 1):
            arch = self._candidate(base, student.cap_fraction, enc_k, dec_k)
            widths = narrowest[:kept] + arch["arch_kwargs"]["features_per_stage"][kept:]
            if tuple(widths) in seen:
                continue
            seen.add(tuple(widths))
            arch["arch_kwargs"]["features_per_stage"] = widths
            cost = self._fits(arch, param_limit, gflop_limit)
            if cost is None:
                break  # widths never shrink as the base grows, so parameters and GFLOPs only grow
            wider.append(self._student(arch, cost, base, student.cap_fraction))
        return wider

    def _student(self, arch: dict, cost: NetworkCost, base: int, cap_fraction: float) -> StudentArchitecture:
        kwargs = arch["arch_kwargs"]
        return StudentArchitecture(arch, cost, base, max(kwargs["features_per_stage"]), tuple(kwargs[self.encoder_key]),
                                   tuple(kwargs[DECODER_DEPTH_KEY]), cap_fraction)

    def search(self, param_limit: float, gflop_limit: float) -> StudentArchitecture:
        bases = list(range(MIN_BASE_WIDTH, self.teacher_widths[0] + 1, 2)) or [self.teacher_widths[0]]
        best, best_key = None, None
        for cap_fraction in MAX_WIDTH_FRACTIONS:
            for enc_k in range(1, max(self.teacher_encoder_depth) + 1):
                for dec_k in range(1, max(self.teacher_decoder_depth) + 1):
                    lo, hi, found = 0, len(bases) - 1, None
                    while lo <= hi:  # largest base width that fits
                        mid = (lo + hi) // 2
                        arch = self._candidate(bases[mid], cap_fraction, enc_k, dec_k)
                        cost = self._fits(arch, param_limit, gflop_limit)
                        if cost is not None:
                            found, lo = (arch, cost, bases[mid]), mid + 1
                        else:
                            hi = mid - 1
                    if found is None:
                        continue
                    arch, cost, base = found
                    key = (cost.params, cost.gflops, base, enc_k, dec_k, cap_fraction)
                    if best_key is None or key > best_key:
                        best_key = key
                        best = self._student(arch, cost, base, cap_fraction)
        if best is None:
            smallest = measure(self._candidate(bases[0], MAX_WIDTH_FRACTIONS[-1], 1, 1),
                               self.input_channels, self.num_classes, self.patch_size)
            limits = [f"≤ {param_limit:,.0f} parameters" if param_limit != float("inf") else "",
                      f"≤ {gflop_limit:.4g} GFLOPs per patch" if gflop_limit != float("inf") else ""]
            coarser = smallest.params <= param_limit  # only the compute is out of reach: fewer voxels help
            raise NnkdError(
                f"no student architecture meets the budget ({', '.join(x for x in limits if x)}); the smallest "
                f"candidate has {smallest.params:,} parameters and {smallest.gflops:.4g} GFLOPs per patch",
                "raise --max-params/--max-gflops or use a larger preset" + (
                    "; or plan the student at a coarser spacing (nnUNetv2_plan_experiment -overwrite_target_spacing "
                    "… -overwrite_plans_name P, then --teacher-plans P; docs/planning.md)" if coarser else ""))
        return best
