"""An ONNX model as a backend: its tensors (graph.py), run by onnxruntime (runner.py), its
layers found again in the node names' scopes by tfgraph/scopes.py.

Node names keep the scopes of the framework that exported the model. tf2onnx keeps the
SavedModel's op names (`StatefulPartitionedCall/small_1/block1_conv1_1/convolution`), so a
conversion of a Keras 3 export reads with Keras 3's naming (the model scope left out, `_N`
removed: `block1_conv1`). Other files (torch.onnx's `/backbone/layer1/conv/Conv`, a
tf2onnx conversion of a tf.keras 2 or TensorFlow 1 graph, which adds no `_N`) read as
TensorFlow 1 graphs do: every scope that computes something from the inputs is a layer,
named as it is (`backbone`, `backbone/layer1`, `backbone/layer1/conv`). `params` counts the
elements of the initializers holding weights that a layer's nodes read.
"""

from tensorprobe.backends import base
from tensorprobe.errors import ModelLoadError
from tensorprobe.text import first_line

INSTALL = "pip install 'tensorprobe[onnx]'"


def required(path):
    """onnx and onnxruntime, imported; ModelLoadError saying how to install them otherwise."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ModelLoadError(f"{path}: is an ONNX model; reading it needs onnx and onnxruntime, "
                             f"which are not installed ({INSTALL})") from e
    return onnx, onnxruntime


class OnnxBackend(base.Backend):
    def __init__(self, path, sha256, model, graph, versions):
        super().__init__()
        self.path, self.format, self.sha256 = path, "onnx", sha256
        self.model, self._tensor_graph = model, graph
        self.runtime = versions  # {"onnx_version": ..., "onnxruntime_version": ...}
        self.loader = f"onnxruntime {versions['onnxruntime_version']}"

    @property
    def source(self):
        return self.tensor_graph.source

    def _build_layer_graph(self):
        from tensorprobe.backends.tfgraph import scopes

        graph = self.tensor_graph
        found = None
        if any(scopes.CALL_WRAPPER.fullmatch(op.name.split("/", 1)[0]) for op in graph.ops if "/" in op.name):
            found = scopes.find_layers(graph, scopes.KERAS3)  # a tf2onnx conversion of a Keras 3 export
            if found.entries:
                _fused_layers(found, graph)
        if not found or not found.entries:
            found = scopes.find_layers(graph, scopes.TF1)
        _count_params(found, graph)
        found.notes = list(graph.notes)
        return found

    CHUNKS = True  # tensors in chunks, one session each (runner.py)

    def extraction(self, names, max_live_bytes=None):
        from tensorprobe.backends.onnx.runner import extraction_function

        return extraction_function(self.tensor_graph, list(names), max_live_bytes)

    def layer_of(self, tensor_name):
        op = self.tensor_graph.op_of.get(tensor_name)
        return self.layer_graph.layer_of_op.get(op, "") if op is not None else ""

    def describe(self):
        """The scopes' ModelInfo, its inputs and outputs with symbolic dimensions by name."""
        from tensorprobe.backends.tfgraph import scopes

        info = scopes.describe(self.layer_graph)
        graph = self.tensor_graph
        info.inputs = [(s.name, s.dims if s.dims is not None else [], s.dtype.name) for s in graph.inputs]
        info.outputs = [(name, dims if dims is not None else [], dtype)
                        for name, (dtype, dims) in graph.output_dims.items()]
        return info

    def title_parts(self):
        producer = self.model.producer_name
        version = self.model.producer_version
        opsets = ", ".join(f"opset {o.version}" if not o.domain else f"{o.domain} {o.version}"
                           for o in self.model.opset_import)
        made = f"from {producer} {version}".rstrip() if producer else ""
        return [part for part in (made, opsets) if part]

    def versions(self):
        """onnx's and onnxruntime's versions, and what made the file (`tf2onnx 1.17.0`)."""
        return {**self.runtime, "onnx_producer": f"{self.model.producer_name} {self.model.producer_version}".strip()}

    def fingerprint(self):
        return {"signature": None, "raw_quantized": False}

    def precision(self):
        """The graph's half-precision and 8- or 16-bit integer tensors (a quantized model's
        QuantizeLinear outputs), the narrowest."""
        return base.narrowest({t.dtype for t in self.tensor_graph.tensors})


def _fused_layers(layers, graph):
    """Add the Keras 3 layers that tf2onnx's optimiser folded into another layer's node (a
    Conv2D into the BatchNormalization after it): a layer scope (`_N`) that no node is in,
    named by an initializer that a node of another layer reads, is listed as fused into that
    layer (reach "fused"), before it among its siblings."""
    from tensorprobe.backends.tfgraph import scopes

    entries = layers.entries
    fused = {}  # path -> (the layer whose node computes it, that node's op type)
    for op in graph.ops:
        owner = layers.layer_of_op.get(op.name)
        for name in op.inputs:
            if owner is None or name not in graph.weights or "/" not in name:
                continue
            parts = scopes.scope_path(name) or []
            if parts and layers.model_name and scopes.KERAS3.layer_name(parts[0]) == layers.model_name:
                parts = parts[1:]
            path = ""
            for part in parts:
                candidate = f"{path}/{scopes.KERAS3.layer_name(part)}" if path else scopes.KERAS3.layer_name(part)
                if candidate in entries:
                    path = candidate
                    continue
                if scopes.SUFFIXED.fullmatch(part) and candidate not in fused and candidate != owner and \
                        (entries[owner].parent or "") == path:
                    fused[candidate] = (owner, op.type)
                break
    if not fused:
        return
    for path, (owner, op_type) in fused.items():
        parent = entries[owner].parent
        entry = scopes.ScopeLayer(path, "", entries[owner].depth, None, parent, "fused", fused_into=owner,
                                  op_type=op_type)
        siblings = entries[parent].children if parent is not None else None
        if siblings is not None:
            siblings.insert(siblings.index(owner), path)
        ordered = {}
        for key, value in entries.items():
            if key == owner:
                ordered[path] = entry
            ordered[key] = value
        entries.clear()
        entries.update(ordered)
    _renumber(entries)


def _renumber(entries):
    """Each entry's index from its place among its siblings (entries: parents first, in order)."""
    counts = {}
    for entry in entries.values():
        k = counts.get(entry.parent, 0)
        counts[entry.parent] = k + 1
        entry.index = f"{entries[entry.parent].index}.{k}" if entry.parent is not None else str(k)


def _count_params(layers, graph):
    """Each layer's `params`: the elements of the distinct initializers holding weights
    (graph.is_weight) that its nodes read (its sub-layers' included); the model's: all the graph reads."""
    constants = graph.weights
    read = {}
    for op in graph.ops:
        path = layers.layer_of_op.get(op.name, "")
        weights = [name for name in op.inputs if name in constants]
        while path:
            read.setdefault(path, set()).update(weights)
            path = layers.entries[path].parent or ""
    for path, entry in layers.entries.items():
        entry.params = sum(constants[name] for name in read.get(path, ()))
    layers.params = sum(constants[name] for name in {n for op in graph.ops for n in op.inputs if n in constants})


def load_onnx(path):
    """Read the ONNX model at `path` (its external data beside it) and its graph."""
    onnx, onnxruntime = required(path)
    from google.protobuf.message import DecodeError

    from tensorprobe.backends.onnx.graph import read_graph

    try:
        model = onnx.load(path)
    except (DecodeError, ValueError, OSError, onnx.checker.ValidationError) as e:
        raise ModelLoadError(f"{path}: damaged or incomplete ONNX file ({first_line(e)})") from e
    if not model.graph.node:
        raise ModelLoadError(f"{path}: the ONNX graph holds no nodes")
    graph = read_graph(model, path)
    versions = {"onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__}
    return OnnxBackend(path, base.file_sha256(path), model, graph, versions)
