"""Where the synthetic study's time went, step by step, from the files it wrote (it keeps no clock of its own).

    python benchmarks/study_time.py STUDY_OUTPUT [--teacher TEACHER_FOLD] [--start 2026-12-04T09:43:34Z]
        [--wall SECONDS] [-o OUT]

STUDY_OUTPUT is `synthetic_study.py -o`: one nnkd_benchmark folder per regime (labeled4, all_labels), each with
its runs under runs/. Every time is read from the runs' own files:
- the teacher (--teacher, its fold folder): first to last timestamp of its nnU-Net training log;
- each training run: the first timestamp of its training log to its final validation's summary.json;
- each benchmark: "before the runs" (planning, caching the teacher) from the end of the previous step
  (--start, or the teacher, for the first) to its first run's start; "runs" from the first run's start to the
  last run's end (with --jobs N, N at a time); "after the runs" (predicting the validation cases with every
  model, latency, report) from there to its results.json.
--wall gives the whole command's wall time (e.g. /usr/bin/time's), to show what the steps leave out.
Writes OUT/study_time.json and OUT/study_time.md (default OUT: STUDY_OUTPUT) and prints the markdown.
"""

import argparse
import json
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+): ")
SEED = re.compile(r"-s\d+$")


def log_times(fold: Path) -> tuple[float, float] | None:
    """(first, last) timestamp, as POSIX seconds, of nnU-Net's training logs in a fold folder (several when it
    was continued); None without any. nnU-Net writes local time; this machine's is UTC."""
    stamps = []
    for log in sorted(fold.glob("training_log_*.txt")):
        for line in log.read_text(errors="replace").splitlines():
            match = STAMP.match(line)
            if match:
                stamps.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return (min(stamps), max(stamps)) if stamps else None


def run_times(benchmark: Path) -> list[dict]:
    """Each finished run of a benchmark folder: name, group (the name without its seed), start, end, minutes."""
    runs = []
    for run in sorted(p for p in (benchmark / "runs").iterdir() if p.is_dir()):
        summaries = list(run.glob("*/*/fold_*/validation/summary.json"))
        times = log_times(summaries[0].parent.parent) if summaries else None
        if times is None:
            continue
        end = summaries[0].stat().st_mtime
        runs.append({"run": run.name, "group": SEED.sub("", run.name), "start": times[0], "end": end,
                     "minutes": (end - times[0]) / 60})
    return runs


def benchmark_times(benchmark: Path, runs: list[dict], previous_end: float | None) -> dict:
    """A benchmark's steps from its finished runs (run_times) and its results.json."""
    if not runs:
        raise SystemExit(f"study_time: error: no finished run under {benchmark / 'runs'}")
    first, last = min(r["start"] for r in runs), max(r["end"] for r in runs)
    results = benchmark / "results.json"
    end = results.stat().st_mtime if results.is_file() else None
    groups = {}
    for r in runs:
        groups.setdefault(r["group"], []).append(r["minutes"])
    return {"name": benchmark.name, "runs": runs,
            "groups": {g: {"runs": len(m), "min": min(m), "median": statistics.median(m), "max": max(m),
                           "sum": sum(m)} for g, m in groups.items()},
            "before_runs_minutes": (first - previous_end) / 60 if previous_end is not None else None,
            "runs_minutes": (last - first) / 60, "run_minutes_sum": sum(r["minutes"] for r in runs),
            "after_runs_minutes": (end - last) / 60 if end is not None else None, "end": end if end else last,
            "finished": end is not None}


def study_times(output: Path, teacher: Path | None, start: float | None) -> dict:
    teacher_times = log_times(teacher) if teacher else None
    if teacher and teacher_times is None:
        raise SystemExit(f"study_time: error: no nnU-Net training log in {teacher}")
    runs = {p: run_times(p) for p in output.iterdir() if (p / "runs").is_dir()}  # each log read once
    benchmarks = sorted(runs, key=lambda p: min((r["start"] for r in runs[p]), default=float("inf")))
    previous = start if start is not None else (teacher_times[1] if teacher_times else None)
    steps = []
    for benchmark in benchmarks:
        steps.append(benchmark_times(benchmark, runs[benchmark], previous))
        previous = steps[-1]["end"]
    total = sum(max(s["before_runs_minutes"] or 0, 0) for s in steps) + sum(
        s["runs_minutes"] + (s["after_runs_minutes"] or 0) for s in steps)
    return {"teacher_minutes": (teacher_times[1] - teacher_times[0]) / 60 if teacher_times else None,
            "benchmarks": steps, "benchmark_minutes": total}


def markdown(times: dict, wall: float | None) -> str:
    lines = ["| step | runs | minutes per run: min / median / max | sum of run minutes | wall minutes |",
             "|---|---|---|---|---|"]
    if times["teacher_minutes"] is not None:
        lines.append(f"| teacher (nnU-Net default plan) | 1 | | | {times['teacher_minutes']:.1f} |")
    for step in times["benchmarks"]:
        name = step["name"]
        before = step["before_runs_minutes"]
        if before is not None:  # negative: the benchmark's runs started before the previous step ended
            lines.append(f"| {name}: before the runs (plan, teacher cache) | | | | "
                         f"{f'{before:.1f}' if before >= 0 else 'overlaps the previous step: not one run'} |")
        for group, g in step["groups"].items():
            lines.append(f"| {name}: {group} | {g['runs']} | {g['min']:.1f} / {g['median']:.1f} / {g['max']:.1f} | "
                         f"{g['sum']:.1f} | |")
        lines.append(f"| {name}: all runs, first start to last end | {len(step['runs'])} | | "
                     f"{step['run_minutes_sum']:.1f} | {step['runs_minutes']:.1f} |")
        after = step["after_runs_minutes"]
        lines.append(f"| {name}: after the runs (predictions, latency, report) | | | | "
                     f"{f'{after:.1f}' if after is not None else 'not finished'} |")
    total = times["benchmark_minutes"] + (times["teacher_minutes"] or 0)
    lines.append(f"| **the steps above** | | | | **{total:.1f}** ({total / 60:.2f} h) |")
    if wall is not None:
        lines.append(f"| the command's wall time (given) | | | | {wall / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the study's output folder (synthetic_study.py -o)")
    parser.add_argument("--teacher", type=Path, help="the teacher's fold folder, to include its training")
    parser.add_argument("--start", help="when the study command started (ISO 8601, e.g. 2026-12-04T09:43:34Z)")
    parser.add_argument("--wall", type=float, help="the command's wall time in seconds")
    parser.add_argument("-o", type=Path, help="where to write study_time.json/.md (default: the study's folder)")
    args = parser.parse_args()
    start = None
    if args.start:
        start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
        start = (start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp()
    times = study_times(args.output, args.teacher, start)
    out = args.o or args.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_time.json").write_text(json.dumps({**times, "wall_seconds": args.wall}, indent=1))
    text = markdown(times, args.wall)
    (out / "study_time.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
