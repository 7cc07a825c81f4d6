"""nnkd_teachers: list the teacher families and their options, or describe one teacher before training with it."""

import json

from nnkd.cli._common import ArgumentParser, add_verbose, run
from nnkd.errors import NnkdError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_teachers",
                       description="List teacher families with their options and defaults (no arguments; nothing "
                                   "is loaded), or `describe SPEC`: parameters, input size, stages (channels, "
                                   "stride), logits, and the time of one forward pass.")
    p.add_argument("command", nargs="?", choices=["list", "describe"], default="list")
    p.add_argument("spec", nargs="?", help="teacher spec family:PATH[?key=value&…] (for describe)")
    p.add_argument("--patch", help="patch size to time, e.g. 32,64,64 (default: 32,64,64, or 128,128 for 2D-only)")
    p.add_argument("--fold", type=int, help="student fold, for teachers that pick a fold (nnunet)")
    p.add_argument("--device", "-device", default=None, choices=("cpu", "cuda", "mps"),
                   help="default: cuda if available, else cpu")
    p.add_argument("--repeats", type=int, default=1, help="timed forward passes after one warm-up (median)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_verbose(p)
    return p


def _parse_patch(text: str) -> tuple[int, ...]:
    try:
        patch = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as e:
        raise NnkdError(f"--patch {text} is not a list of sizes", "write e.g. --patch 32,64,64") from e
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise NnkdError(f"--patch {text} is not a 2D or 3D size", "write e.g. --patch 32,64,64 or 128,128")
    return patch


def _option_text(value) -> str:
    """A default as it would be written in a spec: 1,2,3 for a tuple, true/false, nothing for an empty one."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def _list_families(as_json: bool) -> str:
    """Each family's summary and its options with their defaults, from the registry alone: nothing is built."""
    from nnkd.teachers.registry import family_options, family_summary, list_teachers

    families = {f: (family_summary(f), family_options(f)) for f in list_teachers()}
    if as_json:
        return json.dumps({f: {"summary": summary, "options": options}
                           for f, (summary, options) in families.items()}, indent=1)
    lines = []
    for family, (summary, options) in families.items():
        lines.append(f"{family:<12} {summary}")
        listed = " ".join(f"{key}={_option_text(value)}" for key, value in options.items()) or "none"
        lines.append(f"{'':<12} options: {listed}")
    return "\n".join(lines)


def _teachers(args) -> None:
    from nnkd.devices import resolve_device
    from nnkd.teachers.describe import default_patch, format_description, time_forward
    from nnkd.teachers.registry import create_teacher

    if args.command == "list":
        print(_list_families(args.json))
        return
    if not args.spec:
        raise NnkdError("describe needs a teacher spec", "e.g. nnkd_teachers describe deepbet")
    device = resolve_device(args.device)
    teacher = create_teacher(args.spec, fold=args.fold, device=device)
    patch = _parse_patch(args.patch) if args.patch else default_patch(teacher)
    if len(patch) not in teacher.serves_dims:
        raise NnkdError(f"the teacher takes {' or '.join(f'{d}D' for d in teacher.serves_dims)} patches, "
                        f"--patch {args.patch} is {len(patch)}D", "give a patch it serves")
    seconds, shapes = time_forward(teacher, patch, max(1, args.repeats))
    info = teacher.describe() | {"forward_seconds": seconds, "patch": list(patch), "device": str(device),
                                 "feature_shapes": shapes}
    print(json.dumps(info, indent=1) if args.json else format_description(info))


def main(argv=None) -> None:
    run(_teachers, build_parser(), argv)


if __name__ == "__main__":
    main()
