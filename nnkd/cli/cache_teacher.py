"""nnkd_cache_teacher: run a teacher once over a fold's training cases and store its soft predictions."""

from nnkd.cli._common import (ArgumentParser, add_dataset_configuration_fold, add_deprecated, add_step_size, add_verbose,
                              check_step_size, run)
from nnkd.errors import NnkdError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_cache_teacher",
                       description="Run the teacher once over every training case of a fold (nnU-Net's sliding "
                                   "window, Gaussian weighting) and store its probabilities beside the "
                                   "preprocessed data, so nnkd_train --teacher-cache never loads it. Resumable: "
                                   "cases already cached with the same checkpoint and settings are skipped.")
    add_dataset_configuration_fold(p, "the student's fold (0-4 or all)")
    p.add_argument("--teacher", required=True, metavar="SPEC", help="teacher spec with logits (nnkd_teachers)")
    p.add_argument("--teacher-plans", dest="teacher_plans", default="nnUNetPlans", metavar="PLANS",
                   help="the dataset's teacher plans, whose preprocessed data is cached (default nnUNetPlans; "
                        "students share it)")
    add_deprecated(p, "-p", "--teacher-plans", "teacher_plans")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored precision")
    p.add_argument("--resolution", default="full", choices=["full", "half"],
                   help="half: 2× average-pooled along the patch axes, upsampled linearly when read")
    p.add_argument("--topk", type=int, default=None, metavar="K",
                   help="keep the K most probable classes per voxel (the rest share the remaining mass), K from 1 to "
                        "the number of classes; default: every class")
    add_step_size(p, "the teacher")
    add_deprecated(p, "--step_size", "-step_size", "step_size", type=float)
    p.add_argument("-num_parts", "--num-parts", dest="num_parts", type=int, default=1, metavar="N",
                   help="split the cases over N processes, GPUs or machines sharing one cache folder, as "
                        "nnUNetv2_predict does (default 1); start one process per -part_id")
    p.add_argument("-part_id", "--part-id", dest="part_id", type=int, default=0, metavar="I",
                   help="which of the -num_parts shares this process caches, 0 to N-1 (default 0)")
    p.add_argument("--device", "-device", default=None, choices=("cpu", "cuda", "mps"),
                   help="default: cuda if available, else cpu")
    add_verbose(p)
    return p


def _cache(args) -> None:
    from nnkd.cache.compute import CacheRequest, cache_teacher, check_parts
    from nnkd.cache.store import CacheSettings

    if args.topk is not None and args.topk < 1:
        raise NnkdError(f"--topk {args.topk} keeps no class", "give --topk 1 or more, or leave it out to keep every "
                                                               "class")
    check_parts(args.num_parts, args.part_id)  # before the teacher loads

    cache_teacher(CacheRequest(dataset=args.d, configuration=args.configuration, fold=args.f, teacher=args.teacher,
                               plans=args.teacher_plans, settings=CacheSettings(args.dtype, args.resolution, args.topk or 0),
                               device=args.device, step_size=check_step_size(args.step_size, "-step_size"),
                               num_parts=args.num_parts, part_id=args.part_id))


def main(argv=None) -> None:
    run(_cache, build_parser(), argv)


if __name__ == "__main__":
    main()
