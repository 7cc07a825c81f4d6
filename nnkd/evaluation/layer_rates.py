"""Where a network's time goes, layer by layer, and how fast each layer computes against what the CPU can do.

For one forward pass of one patch (batch 1, no gradients) every layer is timed — in torch by hooks around each
leaf module, in ONNX Runtime by its own per-node profile — and its FLOPs counted from its shapes (a multiply-add is
2 FLOPs; normalisations, activations and copies count 0, so their time shows as time without FLOPs). A layer's
rate (GFLOP/s) is set against the **reference**: the fastest of a few large 3×3(×3) convolutions of the same
dimensionality, timed in the same runtime on the same machine — what this CPU reaches when a convolution is big
enough (a layer whose maps fit the caches can still exceed it). Rows are grouped by
what decides their speed: operation, channels, kernel and the size of the map it runs on.
"""

import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from nnkd.planners.network_cost import conv_flops

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# the reference convolutions per dimensionality (channels, map size): 3×3(×3) convolutions of nnU-Net's shapes, each
# large enough for the fast kernels; the fastest of them is the reference rate
REFERENCE = {2: [(64, (256, 256)), (128, (64, 64)), (256, (32, 32))],
             3: [(32, (64, 64, 64)), (64, (32, 32, 32)), (128, (16, 16, 16))]}


def _signature(kind: str, shape_out, kernel=None, in_channels=None, out_channels=None) -> str:
    size = "×".join(str(int(s)) for s in shape_out[2:])
    if kind in ("Conv", "ConvTranspose"):
        k = "×".join(str(int(s)) for s in kernel)
        return f"{kind} {in_channels}→{out_channels} k{k} @ {size}"
    return f"{kind} {int(shape_out[1])}ch @ {size}"


def _kind(module: nn.Module) -> str:
    if isinstance(module, CONV_TYPES):
        return "Conv"
    if isinstance(module, TRANSPOSED_TYPES):
        return "ConvTranspose"
    name = type(module).__name__
    return "Norm" if "Norm" in name else name


def torch_layers(network: nn.Module, patch: torch.Tensor, repeats: int = 5) -> list[dict]:
    """One record per leaf-module call: kind, signature, FLOPs, median seconds over `repeats` passes (after one
    warm-up pass)."""
    leaves = [(n, m) for n, m in network.named_modules() if not list(m.children())]
    calls, starts = [], {}

    def before(name):
        def hook(module, args):
            starts[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(module, args, output):
            calls.append((name, time.perf_counter() - starts.pop(name), tuple(args[0].shape),
                          tuple(output.shape) if torch.is_tensor(output) else None))
        return hook

    handles = [h for n, m in leaves for h in (m.register_forward_pre_hook(before(n)),
                                              m.register_forward_hook(after(n)))]
    try:
        with torch.no_grad():
            network(patch)  # warm-up: oneDNN picks and caches its kernels
            per_pass = []
            for _ in range(repeats):
                calls.clear()
                network(patch)
                per_pass.append(list(calls))
    finally:
        for h in handles:
            h.remove()
    modules = dict(leaves)
    layers = []
    for i, (name, _, shape_in, shape_out) in enumerate(per_pass[0]):
        if shape_out is None:
            continue
        module = modules[name]
        kind = _kind(module)
        record = {"layer": name, "kind": kind, "seconds": statistics.median(p[i][1] for p in per_pass), "flops": 0}
        if kind in ("Conv", "ConvTranspose"):
            record["flops"] = conv_flops(kind, module.in_channels, module.out_channels, module.kernel_size,
                                         module.groups, shape_out, shape_in)
            record["signature"] = _signature(kind, shape_out, kernel=module.kernel_size,
                                             in_channels=module.in_channels, out_channels=module.out_channels)
        else:
            record["signature"] = _signature(kind, shape_out)
        layers.append(record)
    return layers


def _ort_profile(path: Path, patch: torch.Tensor, repeats: int, threads: int | None, prefix: Path) -> list:
    """ONNX Runtime's own profile (its trace events) of one warm-up run and `repeats` runs of the model at `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": patch.numpy()}
    for _ in range(repeats + 1):
        session.run(None, feed)
    return json.loads(Path(session.end_profiling()).read_text())


def onnx_layers(network: nn.Module, patch: torch.Tensor, repeats: int = 5, threads: int | None = None) -> list[dict]:
    """One record per ONNX node: op, signature, FLOPs (from ONNX shape inference and the weights' shapes), median
    seconds over `repeats` runs from ONNX Runtime's own profile (after one warm-up run)."""
    import onnx

    from nnkd.inference.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(network, patch.shape[1], tuple(patch.shape[2:]), path)
        model = onnx.load(str(path))
        for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, patch.shape):
            dim.dim_value = int(value)  # the exported axes are dynamic; infer this patch's shapes
        model = onnx.shape_inference.infer_shapes(model)
        shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
                  for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
        shapes["input"] = list(patch.shape)
        weights = {w.name: list(w.dims) for w in model.graph.initializer}
        nodes = {node.name: node for node in model.graph.node}
        producers = {out: node for node in model.graph.node for out in node.output}
        trace = _ort_profile(path, patch, repeats, threads, Path(tmp) / "profile")
    durations = defaultdict(list)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[event["name"][:-len("_kernel_time")]].append(event["dur"] / 1e6)
    layers = []
    for name, seconds in durations.items():
        # ORT's blocked-layout (NCHWc) convolutions are named after the output of the node they replace
        node = nodes.get(name) or producers.get(name.removesuffix("_nchwc"))
        if node is None:  # nodes ORT inserts: layout reorders (copies between NCHW and its blocked layout)
            kind = "Reorder" if name.startswith("Reorder") else name
            layers.append({"layer": name, "kind": kind, "flops": 0, "signature": kind,
                           "seconds": statistics.median(seconds[1:] or seconds)})
            continue
        out_shape = shapes.get(node.output[0])
        in_shape = shapes.get(node.input[0])
        kind = {"Conv": "Conv", "ConvTranspose": "ConvTranspose", "InstanceNormalization": "Norm"}.get(
            node.op_type, node.op_type)
        record = {"layer": name, "kind": kind, "seconds": statistics.median(seconds[1:] or seconds), "flops": 0}
        if kind in ("Conv", "ConvTranspose") and out_shape and in_shape and node.input[1] in weights:
            w = weights[node.input[1]]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            out_channels, in_channels = (w[0], w[1] * groups) if kind == "Conv" else (w[1] * groups, w[0])
            record["flops"] = conv_flops(kind, in_channels, out_channels, w[2:], groups, out_shape, in_shape)
            record["signature"] = _signature(kind, out_shape, kernel=w[2:], in_channels=in_channels,
                                             out_channels=out_channels)
        else:
            record["signature"] = _signature(kind, out_shape) if out_shape and in_shape else kind
        layers.append(record)
    return layers


def reference_rate(dims: int, runtime: str, repeats: int = 5, threads: int | None = None) -> float:
    """GFLOP/s of the fastest reference convolution (REFERENCE) in `runtime`: what this CPU reaches on a
    convolution of nnU-Net's kind when it is large enough."""
    rates = []
    for channels, size in REFERENCE[dims]:
        conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(channels, channels, 3, padding=1).eval()
        patch = torch.randn(1, channels, *size)
        layers = torch_layers(conv, patch, repeats) if runtime == "torch" else \
            onnx_layers(conv, patch, repeats, threads)
        convs = [x for x in layers if x["kind"] == "Conv"]
        rates.append(sum(x["flops"] for x in convs) / sum(x["seconds"] for x in convs) / 1e9)
    return max(rates)


def summarize(layers: list[dict], reference: float) -> dict:
    """Layers grouped by signature (their calls and time summed), sorted by time; each group's share of the pass,
    GFLOP/s and fraction of the reference rate; and the whole pass."""
    groups = defaultdict(lambda: {"calls": 0, "seconds": 0.0, "flops": 0})
    for layer in layers:
        g = groups[(layer["kind"], layer["signature"])]
        g["calls"] += 1
        g["seconds"] += layer["seconds"]
        g["flops"] += layer["flops"]
    total = sum(layer["seconds"] for layer in layers)
    flops = sum(layer["flops"] for layer in layers)
    rows = []
    for (kind, signature), g in sorted(groups.items(), key=lambda kv: -kv[1]["seconds"]):
        rate = g["flops"] / g["seconds"] / 1e9 if g["flops"] and g["seconds"] else None
        rows.append({"kind": kind, "signature": signature, "calls": g["calls"], "seconds": g["seconds"],
                     "share": g["seconds"] / total if total else 0, "gflops": g["flops"] / 1e9,
                     "gflop_per_s": rate, "of_reference": rate / reference if rate else None})
    by_kind = defaultdict(float)
    for layer in layers:
        by_kind[layer["kind"]] += layer["seconds"]
    rate = flops / total / 1e9 if total else None
    return {"seconds": total, "gflops": flops / 1e9, "gflop_per_s": rate,
            "of_reference": rate / reference if rate else None, "reference_gflop_per_s": reference,
            "share_by_kind": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "rows": rows}


def network_rates(network: nn.Module, input_channels: int, patch_size, runtimes=("torch", "onnx"), repeats: int = 5,
                  threads: int | None = None, references: dict | None = None) -> dict:
    """summarize() of one patch through `network` in each runtime, against that runtime's reference rate (from
    `references`, runtime -> GFLOP/s, when measured once for several networks; else measured here)."""
    network = network.eval().cpu()
    patch = torch.randn(1, input_channels, *patch_size)
    result = {}
    for runtime in runtimes:
        reference = (references or {}).get(runtime) or reference_rate(len(patch_size), runtime, repeats, threads)
        layers = torch_layers(network, patch, repeats) if runtime == "torch" else \
            onnx_layers(network, patch, repeats, threads)
        result[runtime] = summarize(layers, reference)
    return result


def format_rates(name: str, runtime: str, summary: dict, top: int = 12) -> str:
    """A markdown table of the costliest layer groups."""
    lines = [f"**{name}, {runtime}**: {summary['seconds'] * 1e3:.1f} ms per patch, {summary['gflops']:.2f} GFLOPs, "
             f"{summary['gflop_per_s']:.1f} GFLOP/s = {100 * summary['of_reference']:.0f} % of the reference "
             f"convolution ({summary['reference_gflop_per_s']:.1f} GFLOP/s); time by kind: "
             + ", ".join(f"{k} {100 * v:.0f} %" for k, v in summary["share_by_kind"].items() if v >= 0.01),
             "", "| layer group | calls | share of time | GFLOPs | GFLOP/s | of reference |", "|---|---|---|---|---|---|"]
    for row in summary["rows"][:top]:
        rate = "—" if row["gflop_per_s"] is None else f"{row['gflop_per_s']:.1f}"
        ref = "—" if row["of_reference"] is None else f"{100 * row['of_reference']:.0f} %"
        lines.append(f"| {row['signature']} | {row['calls']} | {100 * row['share']:.1f} % | {row['gflops']:.3f} | "
                     f"{rate} | {ref} |")
    return "\n".join(lines)
