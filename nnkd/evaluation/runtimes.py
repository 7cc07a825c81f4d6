"""The runtimes a model is measured in, and their names in reports (no heavy imports: reports read this)."""

RUNTIME_LABELS = {"torch": "torch fp32", "onnx": "ONNX Runtime fp32", "int8": "ONNX Runtime int8"}
RUNTIMES = tuple(RUNTIME_LABELS)
# every way nnkd runs a network (benchmarks/deploy_latency.py): these, nnkd_predict --bf16 (torch under CPU bf16
# autocast) and nnkd_predict's default fast path (nnkd.inference.fast)
DEPLOY_RUNTIME_LABELS = {**RUNTIME_LABELS, "bf16": "torch bf16", "fast": "nnkd_predict fast path"}


def runtime_label(row: dict) -> str:
    """A measured row's runtime as reports name it; the fast path's with what it chose (in each round)."""
    label = DEPLOY_RUNTIME_LABELS[row["runtime"]]
    if not row.get("fast_path"):
        return label
    chosen = row.get("fast_path_each_round") or [row["fast_path"]["runtime"]]
    if len(set(chosen)) == 1:
        return f"{label} ({chosen[0]})"
    return f"{label} ({', '.join(f'{name} ×{chosen.count(name)}' for name in sorted(set(chosen)))})"
