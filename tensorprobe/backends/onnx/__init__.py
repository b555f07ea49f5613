"""ONNX models: `protobuf` (recognised by content), `graph` (the file read with `onnx`:
every node output in topological order, shapes from shape inference, the subgraphs of
If/Loop/Scan), `runner` (onnxruntime, graph optimisations off, the chosen tensors made graph
outputs in chunks bounded by memory), the layers found again in the node names' scopes
(`layers`), the Backend (backend.py). `onnx` and `onnxruntime` are the `onnx` extra."""

from tensorprobe.backends.onnx import protobuf

DESCRIPTION = "an ONNX .onnx file"


def guess_can_open(path, head):
    """'onnx' for a file that begins an ONNX ModelProto; None otherwise."""
    if head is None:
        return None
    return "onnx" if protobuf.is_model_proto(head) else None


def open(path, fmt, options):
    """No code runs from an ONNX file: `unsafe` and custom objects do not apply."""
    from tensorprobe.backends.onnx.backend import load_onnx

    options.refuse(path)
    return load_onnx(path)
