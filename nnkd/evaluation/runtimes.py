"""The runtimes a model is measured in, and their names in reports (no heavy imports: reports read this)."""

RUNTIME_LABELS = {"torch": "torch fp32", "onnx": "ONNX Runtime fp32", "int8": "ONNX Runtime int8"}
RUNTIMES = tuple(RUNTIME_LABELS)
