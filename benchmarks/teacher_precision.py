"""What a teacher's forward pass in bf16 changes against float32: time, and what a student would learn from.

    python benchmarks/teacher_precision.py --teacher SPEC -d DATASET [-c 3d_fullres] [-f 0] [--cases 8]
        [--batch 2] [--repeats 5] [-o precision.json]

The teacher is built as training builds it (`create_teacher(SPEC, fold=F)`), on the CPU with the threads
`OMP_NUM_THREADS` gives it. For the first `--cases` preprocessed cases of the dataset (nnU-Net's preprocessed
folder of the teacher's plans), one patch of the configuration's size from each case's corner (smaller cases as
they are) goes through the teacher in float32 and under bf16 autocast, as `Teacher.infer` runs it when
`nnkd_teacher_bf16` is on. Per case: the share of voxels where the two argmaxes agree, the voxel-mean
KL(float32 ‖ bf16) of the softmax, the largest probability difference, and the relative error of each stage's
features. Time: a batch of `--batch` random patches of the configuration's size, the median of `--repeats`
passes after one warm-up, in each precision. Prints a summary and writes JSON.
"""

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher spec, as nnkd_train --teacher")
    parser.add_argument("-d", required=True, help="dataset ID or name")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-f", default="0")
    parser.add_argument("-p", default="nnUNetPlans", help="plans of the preprocessed data")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", type=Path, help="JSON output")
    args = parser.parse_args()

    import blosc2
    import numpy as np
    import torch

    from nnkd.devices import cpu_identity, resolve_device
    from nnkd.plans import PreprocessedConfiguration
    from nnkd.teachers.registry import create_teacher

    device = resolve_device("cpu")
    config = PreprocessedConfiguration.load(args.d, args.p, args.c)
    patch = [int(p) for p in config.configuration_manager.patch_size]
    folder = config.data_folder
    teacher = create_teacher(args.teacher, fold=int(args.f), device=device).freeze()
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    cases = []
    for path in sorted(folder.glob("*.b2nd"))[: 2 * args.cases]:
        if path.name.endswith("_seg.b2nd") or len(cases) == args.cases:
            continue
        image = blosc2.open(str(path))[:]
        x = torch.from_numpy(np.ascontiguousarray(image[(slice(None), *(slice(0, p) for p in patch))]))[None].float()
        with torch.no_grad():
            reference = teacher(x)
            with bf16:
                low = teacher(x)
        p, q = reference.logits.softmax(1), low.logits.float().softmax(1)
        cases.append({
            "case": path.name.removesuffix(".b2nd"), "shape": list(x.shape[2:]),
            "argmax_agreement": float((p.argmax(1) == q.argmax(1)).float().mean()),
            "kl": float((p * (p.clamp_min(1e-8).log() - q.clamp_min(1e-8).log())).sum(1).mean()),
            "max_probability_difference": float((p - q).abs().max()),
            "feature_relative_error": [float((b.float() - a).norm() / a.norm())
                                       for a, b in zip(reference.features, low.features)]})

    def seconds(context) -> float:
        x = torch.randn(args.batch, teacher.in_channels, *patch)
        times = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            with torch.no_grad(), context:
                teacher(x)
            if i:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    import contextlib

    fp32_s, bf16_s = seconds(contextlib.nullcontext()), seconds(bf16)
    result = {"teacher": args.teacher, "dataset": str(args.d), "configuration": args.c, "patch_size": patch,
              "batch": args.batch, "torch_threads": torch.get_num_threads(), **cpu_identity(),
              "torch": torch.__version__, "seconds_per_batch": {"float32": fp32_s, "bf16": bf16_s},
              "speedup": fp32_s / bf16_s, "cases": cases,
              "worst": {"argmax_agreement": min(c["argmax_agreement"] for c in cases),
                        "kl": max(c["kl"] for c in cases),
                        "max_probability_difference": max(c["max_probability_difference"] for c in cases),
                        "feature_relative_error": max(max(c["feature_relative_error"]) for c in cases)}}
    print(f"teacher forward, batch {args.batch} × {patch}, {result['torch_threads']} thread(s): float32 "
          f"{fp32_s:.3f} s, bf16 {bf16_s:.3f} s ({result['speedup']:.2f}×)")
    worst = result["worst"]
    print(f"over {len(cases)} case(s): argmax agreement ≥ {worst['argmax_agreement']:.5f}, KL ≤ {worst['kl']:.2e}, "
          f"probability difference ≤ {worst['max_probability_difference']:.3f}, feature error ≤ "
          f"{worst['feature_relative_error']:.4f}")
    if args.o:
        args.o.parent.mkdir(parents=True, exist_ok=True)
        args.o.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
