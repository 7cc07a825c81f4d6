"""The prepared CUDA check: every nnkd path that only a GPU runs, in a few minutes, one line per step.

    bash benchmarks/gpu_check.sh [WORKDIR]        # or: python benchmarks/gpu_check.py [WORKDIR]

On one GPU, with nnU-Net's defaults there (mixed precision through autocast and the GradScaler,
torch.compile of the student), in a fresh set of nnU-Net folders under WORKDIR (default: a temporary
folder): a small synthetic dataset, its plans and a tiny student, a teacher (nnU-Net's default network,
one short epoch), the teacher cache, one short epoch of every method (none, online and cached logit KD,
feature, CKA, DRD, multi-teacher with two teachers, TS-KD with the fold's unlabelled remainder), the
student's prediction of imagesTs and its export (stock model folder and ONNX). Each step runs in this
process, so its line gives its wall time and the peak GPU memory torch allocated during it
(torch.cuda.max_memory_allocated). A failed step prints its traceback and a FAIL line; the later steps still
run, and the check exits non-zero when any step failed.
"""

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

EPOCH = ["--epochs", "1", "--iterations-per-epoch", "5", "--val-iterations-per-epoch", "2", "--device", "cuda"]


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="nnkd_gpu_check_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)  # before nnunetv2 reads them
    os.environ.setdefault("nnUNet_n_proc_DA", "4")

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, work folder {work}", flush=True)

    from nnkd.cli import cache_teacher, export, make_synthetic, plan_and_preprocess, predict, train

    results = work / "nnUNet_results" / "Dataset998_Synthetic"
    teacher = f"nnunet:{results / 'nnKDTrainer_NoKD__nnUNetPlans__3d_fullres'}"
    student = ["Dataset998_Synthetic", "3d_fullres", "0", "--budget", "tiny"]
    steps = [
        ("dataset", make_synthetic.main, ["-d", "998", "--cases", "10", "--shape", "32", "48", "48", "--overwrite"]),
        ("plan tiny", plan_and_preprocess.main, ["-d", "998", "-c", "3d_fullres", "--budget", "tiny", "-np", "4"]),
        ("teacher (nnUNetPlans, none)", train.main, ["998", "3d_fullres", "0", "-p", "nnUNetPlans", "--method", "none",
                                                     *EPOCH]),
        ("cache teacher", cache_teacher.main, ["-d", "998", "-c", "3d_fullres", "-f", "0", "--teacher", teacher,
                                               "--device", "cuda"]),
        ("train none", train.main, [*student, "--method", "none", *EPOCH]),
        # the cached run first: the online run then starts anew in the same trainer folder
        ("train logit (cached)", train.main, [*student, "--method", "logit", "--teacher", teacher, "--teacher-cache",
                                              *EPOCH]),
        ("train logit (online)", train.main, [*student, "--method", "logit", "--teacher", teacher, *EPOCH]),
        ("train feature", train.main, [*student, "--method", "feature", "--teacher", teacher, *EPOCH]),
        ("train cka", train.main, [*student, "--method", "cka", "--teacher", teacher, *EPOCH]),
        ("train drd", train.main, [*student, "--method", "drd", "--teacher", teacher, *EPOCH]),
        ("train multiteacher (2)", train.main, [*student, "--method", "multiteacher", "--teacher", teacher,
                                                "--teacher", teacher, *EPOCH]),
        ("train tskd (--labeled 4)", train.main, [*student, "--method", "tskd", "--teacher", teacher, "--labeled", "4",
                                                  *EPOCH]),
        # the FitNets student: logit KD has two runs (cached and online), between which nnkd_predict and
        # nnkd_export rightly refuse to guess (the first GPU run, 2026-12-04, failed here on --method logit)
        ("predict imagesTs", predict.main, ["-i", str(work / "nnUNet_raw" / "Dataset998_Synthetic" / "imagesTs"),
                                            "-o", str(work / "predictions"), "-d", "998", "-c", "3d_fullres",
                                            "--budget", "tiny", "--method", "feature", "-f", "0", "-device", "cuda"]),
        ("export + ONNX", export.main, ["-d", "998", "-c", "3d_fullres", "--budget", "tiny", "--method", "feature",
                                        "-f", "0", "-o", str(work / "student_model"), "--onnx", "--overwrite"]),
    ]
    total = time.perf_counter()
    failed = []
    for name, entry, argv in steps:
        # each step compiles afresh, as in its own nnkd_train process: dynamo's cache of the U-Net's forward
        # outlives a trainer, and after 8 entries (the first GPU run hit this at its third training) it falls
        # back to eager for the rest of the process, so later steps would not check torch.compile at all
        torch.compiler.reset()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            entry(argv)
            error = None
        except SystemExit as e:
            error = None if e.code in (0, None) else f"exit {e.code}"
        except Exception as e:  # noqa: BLE001 - the check reports every failure, with its traceback, and goes on
            traceback.print_exc(file=sys.stdout)
            error = f"{type(e).__name__}: {e}"
        if error:
            # the later steps still run: a step that needs this one's output fails at once, the others still
            # tell what works (one GPU session is often all there is)
            print(f"FAIL  {name}: {error}", flush=True)
            failed.append(name)
            continue
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
        print(f"ok    {name:30s} {time.perf_counter() - start:7.1f} s   peak GPU memory {peak:8.0f} MiB", flush=True)
    seconds = time.perf_counter() - total
    if failed:
        print(f"gpu_check: {len(failed)} of {len(steps)} steps failed ({', '.join(failed)}) in {seconds:.0f} s")
        return 1
    print(f"gpu_check: all {len(steps)} steps passed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
