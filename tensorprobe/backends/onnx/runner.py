"""Run an ONNX model with onnxruntime and read the chosen tensors back.

The chosen tensors are made the graph's outputs (its own outputs dropped unless chosen), and
the session runs with every graph optimisation off (`ORT_DISABLE_ALL`), so no fusion or
constant folding removes a tensor or computes it another way: each value is the one the
file's node computes, what `onnx.reference.ReferenceEvaluator` gives. It runs on the CPU
execution provider, the reference one.

An output stays alive until the run ends, so a session returning every tensor of a large
graph holds all of them at once (and its own buffers besides). The tensors are therefore
split into chunks whose values for one batch take at most `max_live_bytes` (from their
inferred shapes; a tensor whose shape is not known is counted as the largest known one), one
session per chunk, run one after the other on the same batch, each opened when its turn
comes (a session holds a parsed copy of the graph; one that returns every tensor is kept
from batch to batch); the sessions share one copy of the weights
(`SessionOptions.add_initializer`), and run without a memory arena, so that their buffers are
freed when a run ends. What bounds the whole dump's memory is the batch (`--batch-size`): the
values of every chosen tensor for one batch are handed to the writer together. A model whose inputs have a fixed batch B
runs B rows at a time, the last run padded with zero rows that are dropped.
"""

import numpy as np

from tensorprobe.errors import InputError, ModelLoadError
from tensorprobe.text import first_line, shape_text

MAX_LIVE_BYTES = 1 << 30  # the values one session returns for one batch, at most (a chunk): --max-live-bytes


def ort_errors():
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, name) for name in ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph",
                                                     "NotImplemented", "EPFail") if hasattr(state, name))


class Sessions:
    """onnxruntime sessions of one model, each returning one chunk of tensors, sharing the
    model's weights."""

    def __init__(self, graph):
        self.graph = graph
        self.cache = {}
        self.shared = None  # (numpy arrays, OrtValues) of the initializers, made once

    def session(self, names, alone=False):
        """The session returning `names`; `alone`: close every other one first (the sessions
        of several chunks each hold a parsed copy of the graph, so only one is kept at a time)."""
        key = tuple(names)
        if alone:
            for other in [k for k in self.cache if k != key]:
                del self.cache[other]
        if key not in self.cache:
            self.cache[key] = self._open(names)
        return self.cache[key]

    def _open(self, names):
        import onnx
        import onnxruntime as ort

        model = self.graph.model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3  # its warnings (unused initializers) are not the user's
        # no arena and no memory pattern: a session's buffers are freed when its run ends, so
        # the sessions of a model's chunks do not each keep a forward pass's worth of memory
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        if self.shared is None:
            from onnx import numpy_helper

            arrays = {t.name: np.ascontiguousarray(numpy_helper.to_array(t)) for t in model.graph.initializer}
            self.shared = (arrays, {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()})
        for name, value in self.shared[1].items():
            options.add_initializer(name, value)
        kept = list(model.graph.output)
        del model.graph.output[:]
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
        try:
            content = model.SerializeToString()
        except ValueError as e:  # "Message onnx.ModelProto exceeds maximum protobuf size of 2GB"
            raise ModelLoadError(f"{self.graph.path}: the model is too large to run with chosen outputs "
                                 f"({first_line(e)})") from e
        finally:
            del model.graph.output[:]
            model.graph.output.extend(kept)
        try:
            return ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        except ort_errors() as e:
            raise ModelLoadError(f"{self.graph.path}: onnxruntime cannot run this model: {first_line(e)}") from e


def chunks(graph, names, rows, limit):
    """`names` split, in order, into lists whose values for `rows` samples take at most
    `limit` bytes each (a tensor larger than that alone)."""
    sizes = [_sample_bytes(graph.by_name[name]) for name in names]
    largest = max((s for s in sizes if s is not None), default=0)
    found, current, used = [], [], 0
    for name, size in zip(names, sizes):
        size = (largest if size is None else size) * rows
        if current and used + size > limit:
            found.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        found.append(current)
    return found


def _sample_bytes(info):
    """The bytes of one sample's value of a tensor, or None when its shape is not known."""
    if info.shape is None or any(d is None for d in info.shape[1:]):
        return None
    try:
        itemsize = np.dtype(info.dtype).itemsize
    except TypeError:  # bfloat16 and the float8 types, which NumPy itself does not name
        itemsize = 2 if "16" in info.dtype else 1
    return int(np.prod(info.shape[1:], dtype=np.int64)) * itemsize


def extraction_function(graph, names, max_live_bytes=None):
    """run(list of input batches in `graph.inputs` order[, labels]) -> one array per tensor
    name in `names`, first axis the batch; probe.extraction_function's interface. A chunk's
    values take at most `max_live_bytes` (default MAX_LIVE_BYTES)."""
    sessions = Sessions(graph)
    limit = MAX_LIVE_BYTES if max_live_bytes is None else max_live_bytes
    errors = ort_errors()

    def run(batch, labels=None):
        if len(batch) != len(graph.inputs):
            raise InputError(f"the model takes {len(graph.inputs)} inputs ({_inputs_text(graph.inputs)}), "
                             f"got {len(batch)}")
        arrays = [_checked(spec, np.asarray(x)) for spec, x in zip(graph.inputs, batch)]
        rows = len(arrays[0]) if arrays else 0
        step = graph.batch or rows
        values = {}
        split = chunks(graph, names, step, limit)
        for chunk in split:
            session = sessions.session(chunk, alone=len(split) > 1)
            parts = [[] for _ in chunk]
            for start in range(0, rows, step or 1):
                feed = [a[start:start + step] for a in arrays]
                n = len(feed[0])
                if n < step:  # the last rows of a fixed-batch model: zero rows fill the batch
                    feed = [np.concatenate([f, np.zeros((step - n, *f.shape[1:]), f.dtype)]) for f in feed]
                try:
                    outputs = session.run(chunk, {spec.name: f for spec, f in zip(graph.inputs, feed)})
                except errors as e:
                    raise InputError(f"onnxruntime could not compute this batch: {first_line(e)}") from e
                for part, name, value in zip(parts, chunk, outputs):
                    if not isinstance(value, np.ndarray):
                        raise InputError(f"tensor '{name}' holds a {type(value).__name__}, not an array")
                    if value.ndim == 0 or value.shape[0] != len(feed[0]):
                        raise InputError(f"tensor '{name}' has shape {shape_text(value.shape, '?')} for a batch of "
                                         f"{len(feed[0])}: it has no batch axis")
                    part.append(value[:n])
            for name, part in zip(chunk, parts):
                values[name] = np.concatenate(part) if len(part) != 1 else part[0]
        return [values[name] for name in names]

    return run


def _checked(spec, array):
    """`array` as input `spec` takes it, or an InputError naming the input."""
    dims = spec.shape.dims
    if dims is not None and (array.ndim != len(dims) or any(d is not None and d != s for d, s in
                                                             zip(dims[1:], array.shape[1:]))):
        raise InputError(f"input '{spec.name}': array of shape {tuple(array.shape)} does not fit "
                         f"{shape_text(dims, '?')}")
    if spec.dtype.name == "string":
        return array.astype(object)
    dtype = np.dtype(spec.dtype.name)
    if array.dtype != dtype:
        if array.dtype.kind not in "biuf" or (dtype.kind != "f" and not np.can_cast(array.dtype, dtype, "safe")):
            raise InputError(f"input '{spec.name}': dtype {array.dtype} cannot be fed as {dtype}")
        array = array.astype(dtype)
    return array


def _inputs_text(specs):
    return ", ".join(f"{s.name} {shape_text(s.dims if s.dims is not None else [], '?')} {s.dtype.name}"
                     for s in specs)
