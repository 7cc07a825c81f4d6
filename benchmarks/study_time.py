"""Where the synthetic study's time went, step by step, from the files it wrote (it keeps no clock of its own).

    python benchmarks/study_time.py STUDY_OUTPUT [--teacher TEACHER_FOLD] [--start 2026-12-04T09:43:34Z]
        [--benchmark NAME ...] [--gap MINUTES] [--wall SECONDS] [-o OUT]

STUDY_OUTPUT is `synthetic_study.py -o`: one nnkd_benchmark folder per regime (labeled4, all_labels), each with
its runs under runs/. Every time is read from the runs' own files:
- the teacher (--teacher, its fold folder): first to last timestamp of its nnU-Net training log(s), without
  silences longer than --gap (a stopped teacher that the study continued);
- each training run: the first timestamp of its training log to its final validation's summary.json;
- each benchmark: "before the runs" (planning, caching the teacher) from the end of the previous step
  (--start, or the teacher, for the first) to its first run's start; "runs" from the first run's start to the
  last run's end (with --jobs N, N at a time); "after the runs" (predicting the validation cases with every
  model, latency, report) from there to its results.json.
A study that was stopped (killed and resumed with `nnkd_train --c`, or paused) shows it in the logs: nnU-Net
writes a line at least every epoch, so a silence longer than --gap minutes (default 3) is an interruption. A run
with one is "interrupted": its minutes leave the silences out, and the per-run statistics use only the runs that
were not. The benchmark's "runs" step leaves out every stretch longer than --gap in which no run was going.
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


def log_stamps(fold: Path) -> list[float]:
    """Every timestamp, as sorted POSIX seconds, of nnU-Net's training logs in a fold folder (several when it was
    continued). nnU-Net writes local time; this machine's is UTC."""
    stamps = []
    for log in sorted(fold.glob("training_log_*.txt")):
        for line in log.read_text(errors="replace").splitlines():
            match = STAMP.match(line)
            if match:
                stamps.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return sorted(stamps)


def segments(spans: list[tuple[float, float]], gap_seconds: float) -> list[tuple[float, float]]:
    """Time spans (a time point is a span of length 0) merged into the stretches between silences longer than
    gap_seconds, in order."""
    out = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] <= gap_seconds:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def minutes(stretches: list[tuple[float, float]]) -> float:
    """The minutes that stretches (from segments) cover."""
    return sum(b - a for a, b in stretches) / 60


def run_times(benchmark: Path, gap_minutes: float = 3) -> list[dict]:
    """Each finished run of a benchmark folder: name, group (the name without its seed), start, end, minutes
    (start to end), active minutes (without silences longer than gap_minutes), its active stretches, and
    whether it was interrupted (more than one stretch)."""
    runs = []
    for run in sorted(p for p in (benchmark / "runs").iterdir() if p.is_dir()):
        summaries = list(run.glob("*/*/fold_*/validation/summary.json"))
        stamps = log_stamps(summaries[0].parent.parent) if summaries else []
        if not stamps:
            continue
        end = summaries[0].stat().st_mtime
        active = segments([(t, t) for t in stamps + [max(end, stamps[-1])]], gap_minutes * 60)
        runs.append({"run": run.name, "group": SEED.sub("", run.name), "start": stamps[0], "end": end,
                     "minutes": (end - stamps[0]) / 60, "active_minutes": minutes(active),
                     "segments": active, "interrupted": len(active) > 1})
    return runs


def benchmark_times(benchmark: Path, runs: list[dict], previous_end: float | None, gap_minutes: float = 3) -> dict:
    """A benchmark's steps from its finished runs (run_times) and its results.json. Per group of seeds, the
    statistics of its uninterrupted runs (None when every run was interrupted) and how many were interrupted;
    the runs step without the stretches longer than gap_minutes in which no run was going."""
    if not runs:
        raise SystemExit(f"study_time: error: no finished run under {benchmark / 'runs'}")
    first, last = min(r["start"] for r in runs), max(r["end"] for r in runs)
    results = benchmark / "results.json"
    end = results.stat().st_mtime if results.is_file() else None
    groups = {}
    for r in runs:
        groups.setdefault(r["group"], []).append(r)
    stats = {}
    for group, members in groups.items():
        m = [r["minutes"] for r in members if not r["interrupted"]]
        stats[group] = {"runs": len(m), "interrupted": len(members) - len(m),
                        "min": min(m) if m else None, "median": statistics.median(m) if m else None,
                        "max": max(m) if m else None, "sum": sum(m),
                        "interrupted_active_sum": sum(r["active_minutes"] for r in members if r["interrupted"])}
    going = segments([span for r in runs for span in r["segments"]], gap_minutes * 60)
    runs_minutes = minutes(going)
    return {"name": benchmark.name, "runs": runs, "groups": stats,
            "before_runs_minutes": (first - previous_end) / 60 if previous_end is not None else None,
            "runs_minutes": runs_minutes, "paused_minutes": (last - first) / 60 - runs_minutes,
            "run_minutes_sum": sum(r["active_minutes"] for r in runs),
            "after_runs_minutes": (end - last) / 60 if end is not None else None, "end": end if end else last,
            "finished": end is not None}


def study_times(output: Path, teacher: Path | None, start: float | None, gap_minutes: float = 3,
                only: list[str] | None = None) -> dict:
    teacher_stamps = log_stamps(teacher) if teacher else []
    if teacher and not teacher_stamps:
        raise SystemExit(f"study_time: error: no nnU-Net training log in {teacher}")
    teacher_going = segments([(t, t) for t in teacher_stamps], gap_minutes * 60)
    folders = [p for p in output.iterdir() if (p / "runs").is_dir() and (not only or p.name in only)]
    if only and len(folders) < len(set(only)):
        raise SystemExit(f"study_time: error: no benchmark {sorted(set(only) - {p.name for p in folders})} in {output}")
    runs = {p: run_times(p, gap_minutes) for p in folders}  # each log read once
    benchmarks = sorted(runs, key=lambda p: min((r["start"] for r in runs[p]), default=float("inf")))
    previous = start if start is not None else (teacher_stamps[-1] if teacher_stamps else None)
    steps = []
    for benchmark in benchmarks:
        steps.append(benchmark_times(benchmark, runs[benchmark], previous, gap_minutes))
        previous = steps[-1]["end"]
    total = sum(max(s["before_runs_minutes"] or 0, 0) for s in steps) + sum(
        s["runs_minutes"] + (s["after_runs_minutes"] or 0) for s in steps)
    return {"teacher_minutes": minutes(teacher_going) if teacher_stamps else None,
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
            spread = f"{g['min']:.1f} / {g['median']:.1f} / {g['max']:.1f}" if g["runs"] else ""
            if g["interrupted"]:
                spread += f" (+ {g['interrupted']} interrupted: {g['interrupted_active_sum']:.1f} min going)"
            lines.append(f"| {name}: {group} | {g['runs']} | {spread.strip()} | {g['sum']:.1f} | |")
        paused = step["paused_minutes"]
        lines.append(f"| {name}: all runs, first start to last end{' without the pauses' if paused > 0 else ''} | "
                     f"{len(step['runs'])} | | {step['run_minutes_sum']:.1f} | {step['runs_minutes']:.1f}"
                     f"{f' ({paused:.1f} paused, left out)' if paused > 0 else ''} |")
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
    parser.add_argument("--benchmark", action="append",
                        help="only this benchmark folder (repeatable): e.g. when an earlier one was re-reported "
                             "by a resumed study, which rewrites its results.json; give --start then")
    parser.add_argument("--gap", type=float, default=3,
                        help="minutes without a log line that count as an interruption (default 3)")
    parser.add_argument("-o", type=Path, help="where to write study_time.json/.md (default: the study's folder)")
    args = parser.parse_args()
    start = None
    if args.start:
        start = datetime.fromisoformat(args.start.replace("Z", "+00:00"))
        start = (start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp()
    times = study_times(args.output, args.teacher, start, args.gap, args.benchmark)
    out = args.o or args.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_time.json").write_text(json.dumps({**times, "wall_seconds": args.wall}, indent=1))
    text = markdown(times, args.wall)
    (out / "study_time.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
