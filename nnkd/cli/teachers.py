"""nnkd_teachers: list the teacher families, or describe one teacher before training with it."""

from nnkd.cli._common import ArgumentParser, add_verbose, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_teachers",
                       description="List teacher families (no arguments), or `describe SPEC`: parameters, input "
                                   "size, stages (channels, stride), logits, and the time of one forward pass.")
    p.add_argument("command", nargs="?", choices=["list", "describe"], default="list")
    p.add_argument("spec", nargs="?", help="teacher spec family:PATH[?key=value&…] (for describe)")
    p.add_argument("--patch", help="patch size to time, e.g. 32,64,64 (default: 32,64,64, or 128,128 for 2D-only)")
    p.add_argument("--fold", type=int, help="student fold, for teachers that pick a fold (nnunet)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    p.add_argument("--repeats", type=int, default=1, help="timed forward passes after one warm-up (median)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_verbose(p)
    return p


def _parse_patch(text: str) -> tuple[int, ...]:
    from nnkd.errors import NnkdError

    try:
        patch = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as e:
        raise NnkdError(f"--patch {text} is not a list of sizes", "write e.g. --patch 32,64,64") from e
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise NnkdError(f"--patch {text} is not a 2D or 3D size", "write e.g. --patch 32,64,64 or 128,128")
    return patch


def _teachers(args) -> None:
    import json

    from nnkd.devices import resolve_device
    from nnkd.errors import NnkdError
    from nnkd.teachers.describe import default_patch, format_description, time_forward
    from nnkd.teachers.registry import create_teacher, family_summary, list_teachers

    if args.command == "list":
        families = list_teachers()
        if args.json:
            print(json.dumps({f: family_summary(f) for f in families}, indent=1))
        else:
            print("\n".join(f"{f:<12} {family_summary(f)}" for f in families))
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
