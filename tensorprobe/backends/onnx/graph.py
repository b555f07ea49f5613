"""An ONNX model as a graph of tensors: every node's outputs in topological order, with the
op type, dtype and shape of each (from the file's value infos, completed by
`onnx.shape_inference`), the tensors computed inside the subgraphs of If, Loop and Scan
nodes, and how its inputs are fed.

ONNX names tensors (graph edges) and nodes apart. A tensor is known by its own name
(`StatefulPartitionedCall/small_1/dense_1/MatMul:0` after tf2onnx,
`/backbone/layer1/conv/Conv_output_0` after torch.onnx), and also by the name of the node
that makes it when that node has one output and no tensor bears that name. Name scopes
(layers.py) are read from the node names: the file's own names, a leading '/' dropped (a
node without a name takes its first output's, and a name borne twice is told apart by
`__K`), as `OpInfo.name`.

Each tensor's dataset is `/tensors/<tensor name>`, each '/' opening a group, empty
components and a leading '/' dropped, '.' and '..' replaced by '_'; where that path would be
another tensor's, or the group holding another's (`x` beside `x/y`), `#N` (its position) is
added. Inputs with a symbolic first dimension (`N`, `batch_size`, tf2onnx's `unk__39`) take
any number of rows; a fixed first dimension B makes the model run B rows at a time.
"""

import heapq
from dataclasses import dataclass, field

from tensorprobe.backends.tfgraph.tensors import OpInfo, TensorInfo
from tensorprobe.errors import ModelLoadError
from tensorprobe.text import first_line, shape_text

UNSTORABLE = ("string", "sequence", "map", "optional", "sparse_tensor", "opaque")
UNKNOWN_DTYPE = "unknown"  # a tensor whose type the file does not give and shape inference did not find


@dataclass
class OnnxTensor(TensorInfo):
    """One tensor of the graph: `node` the name of the node that makes it (as the file has
    it), `subgraph` where it is computed when inside a node's subgraph ("body of Loop
    'loop'"), `dataset` its path under /tensors."""

    node: str = ""
    subgraph: str | None = None
    dataset: str = ""
    columns: bool = False  # the listing shows a `subgraph` column (the graph has subgraphs)

    @property
    def op_name(self):
        return self.node

    @property
    def dataset_name(self):
        return self.dataset

    def attributes(self):
        return {"tensor": self.name, "op_type": self.op, "node": self.node}

    def extra_cells(self):
        return {"subgraph": self.subgraph or ""} if self.columns else {}

    def to_json(self):
        return {"name": self.name, "op": self.op, "node": self.node, "dtype": self.dtype, "shape": self.shape,
                "subgraph": self.subgraph}


class Shape:
    """An input's shape with the part of tf.TensorShape's interface that the listing and the
    input feed read (`rank`, `as_list()`, indexing): `dims` None where unknown."""

    def __init__(self, dims):
        self.dims = None if dims is None else list(dims)

    @property
    def rank(self):
        return None if self.dims is None else len(self.dims)

    def as_list(self):
        return list(self.dims)

    def __len__(self):
        return len(self.dims) if self.dims is not None else 0

    def __getitem__(self, index):
        return self.dims[index]

    def __iter__(self):
        return iter(self.dims)


@dataclass(frozen=True)
class DType:
    name: str


@dataclass
class InputTensor:
    """A graph input as the feed takes it: batch axis open (None), fixed sizes elsewhere;
    `dims` as the file says, symbolic dimensions by name."""

    name: str
    shape: Shape
    dtype: DType
    dims: list | None


@dataclass
class OnnxGraph:
    """The main graph of an ONNX model, with the interface of tfgraph.tensors.TensorGraph
    that `tensors`, `dump --tensor` and the scopes' layers use."""

    model: object  # onnx.ModelProto, as read (shapes not inferred: what onnxruntime runs)
    ops: list  # [OpInfo] of the main graph's nodes, topological order; names as scopes read them
    tensors: list  # [OnnxTensor], topological order; a node's subgraph tensors before its outputs
    inputs: list  # [InputTensor] in feed order
    input_tensors: list  # their names
    outputs: list  # [(output name, tensor name)]
    source: str
    batch: int | None  # the inputs' fixed first dimension; None when it is symbolic
    weights: dict  # initializer name -> element count, for those that hold weights (`is_weight`)
    output_dims: dict  # graph output name -> dims as the file says (symbolic by name)
    path: str = ""
    notes: list = field(default_factory=list)
    by_name: dict = field(default_factory=dict)
    fed: set = field(default_factory=set)
    op_of: dict = field(default_factory=dict)  # tensor name -> OpInfo.name of the node making it

    def __post_init__(self):
        self.by_name = {t.name: t for t in self.tensors}
        self.op_of = {name: op.name for op in self.ops for name in op.outputs}
        outputs = {op.name: len(op.outputs) for op in self.ops}
        for t in self.tensors:  # a node with one output: its name names that tensor too
            if t.subgraph is None and t.node and t.node not in self.by_name and outputs[self.op_of[t.name]] == 1:
                self.by_name[t.node] = t
        fed = set(self.input_tensors)
        for op in self.ops:
            if any(name in fed for name in op.inputs):
                fed.update(op.outputs)
        self.fed = fed

    def op_types(self):
        return sorted({t.op for t in self.tensors})

    def extraction_function(self, names):
        from tensorprobe.backends.onnx.runner import extraction_function

        return extraction_function(self, list(names))

    def why_not_dumpable(self, info):
        """Why a tensor cannot be dumped per sample (None when it can)."""
        if info.subgraph is not None:
            return (f"is computed inside the {info.subgraph}, a subgraph, not in the main graph; only that "
                    "node's own outputs can be dumped")
        if info.name not in self.fed:
            return "does not depend on the inputs (a constant), so it has no batch axis"
        if info.dtype in UNSTORABLE:
            return f"holds {info.dtype} values, which cannot be stored as an array"
        if info.shape is not None:
            if not info.shape:
                return "is a scalar (shape ()), which has no batch axis"
            if self.batch is None and info.shape[0] is not None:
                return f"has static shape {shape_text(info.shape, '?')}, which has no batch axis"
            if self.batch is not None and info.shape[0] not in (None, self.batch):
                return (f"has shape {shape_text(info.shape, '?')}, which has no batch axis (the model's inputs "
                        f"have a fixed batch of {self.batch})")
        return None


def dtype_of(elem_type):
    """The NumPy name of an ONNX tensor element type ('float32', 'int64', 'float16', 'bfloat16')."""
    import numpy as np
    import onnx

    if not elem_type:
        return UNKNOWN_DTYPE
    if elem_type == onnx.TensorProto.STRING:
        return "string"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def type_of(type_proto):
    """(dtype name, dims) of a TypeProto: dims None where the rank is unknown, each an int,
    a symbolic name, or None."""
    kind = type_proto.WhichOneof("value")
    if kind != "tensor_type":
        return ({"sequence_type": "sequence", "map_type": "map", "optional_type": "optional",
                 "sparse_tensor_type": "sparse_tensor", "opaque_type": "opaque"}.get(kind, UNKNOWN_DTYPE), None)
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return dtype_of(tensor.elem_type), None
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return dtype_of(tensor.elem_type), dims


def is_weight(dtype):
    """Whether an initializer or constant of `dtype` counts as weights: floats and the 8-bit
    or narrower integers of quantized weights, not the int32/int64 shapes, axes and indices."""
    return dtype.startswith(("float", "bfloat", "int8", "uint8", "int4", "uint4"))


def static(dims):
    """Dims as TensorInfo.shape holds them: symbolic dimensions None."""
    return None if dims is None else [d if isinstance(d, int) else None for d in dims]


def infer(model, path):
    """The model with shapes inferred (`onnx.shape_inference`, constants propagated), and a
    note when inference failed (the file's own value infos are used then)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True), []
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as e:
        return model, [f"shapes: the file's own (shape inference failed: {first_line(e)})"]


def read_graph(model, path):
    """The OnnxGraph of `model`'s main graph; ModelLoadError when a node reads a tensor that
    nothing makes, or the nodes form a cycle."""
    source = f"ONNX graph '{model.graph.name}'" if model.graph.name else "ONNX graph"
    inferred, notes = infer(model, path)
    graph = inferred.graph
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    weights = {t.name: _count(t.dims) for t in graph.initializer if is_weight(dtype_of(t.data_type))}
    weights.update((t.values.name, _count(t.dims)) for t in graph.sparse_initializer
                   if is_weight(dtype_of(t.values.data_type)))
    types = {vi.name: vi.type for vi in (*graph.input, *graph.output, *graph.value_info)}
    feeds = [vi for vi in model.graph.input if vi.name not in initializers]  # IR < 4 lists weights as inputs

    nodes = list(graph.node)
    known = {vi.name for vi in feeds} | initializers
    order = _topological(path, nodes, known)
    scoped = _scope_names(nodes, initializers)
    has_subgraphs = any(_subgraphs(node) for node in nodes)
    tensors, ops = [], []

    def add(name, op_type, node_name, subgraph, type_proto):
        dtype, dims = type_of(type_proto) if type_proto is not None else (UNKNOWN_DTYPE, None)
        tensors.append(OnnxTensor(name, op_type, dtype, static(dims), len(tensors), node=node_name,
                                  subgraph=subgraph, columns=has_subgraphs))

    for k in order:
        node = nodes[k]
        outer = []
        for attribute, body in _subgraphs(node):
            where = f"{attribute} of {node.op_type} '{node.name or scoped[k]}'"
            for inner, inner_where, inner_types in _walk(body, where):
                for name in inner.output:
                    if name:
                        add(name, inner.op_type, inner.name, inner_where, inner_types.get(name))
            outer += _outer_reads(body)
        for name in node.output:
            if name:
                add(name, node.op_type, node.name, None, types.get(name))
        ops.append(OpInfo(scoped[k], node.op_type, [n for n in node.input if n] + outer,
                          [n for n in node.output if n]))

    specs, batch_sizes = [], set()
    for vi in feeds:
        dtype, dims = type_of(vi.type)
        if dims:
            batch_sizes.add(dims[0] if isinstance(dims[0], int) else None)
        shape = Shape(None if dims is None else [None, *static(dims)[1:]] if dims else [])
        specs.append(InputTensor(vi.name, shape, DType(dtype), dims))
    if len(batch_sizes) > 1:
        shown = ", ".join(f"{s.name} {shape_text(s.dims or [], '?')}" for s in specs)
        raise ModelLoadError(f"{path}: the inputs disagree on the batch size ({shown})")
    batch = batch_sizes.pop() if batch_sizes else None
    _dataset_paths(tensors)
    outputs = [(vi.name, vi.name) for vi in model.graph.output]
    output_dims = {vi.name: type_of(types.get(vi.name, vi.type)) for vi in model.graph.output}
    return OnnxGraph(model, ops, tensors, specs, [s.name for s in specs], outputs, source, batch, weights,
                     output_dims, path, notes)


def _count(dims):
    size = 1
    for d in dims:
        size *= d
    return size


def _subgraphs(node):
    """(attribute name, GraphProto) of each subgraph a node holds (If's branches, Loop's and
    Scan's body, any GRAPH or GRAPHS attribute)."""
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append((attribute.name, attribute.g))
        found += [(f"{attribute.name}[{i}]", g) for i, g in enumerate(attribute.graphs)]
    return found


def _walk(body, where):
    """(node, where it is, types of its graph) of every node in `body` and its own subgraphs."""
    types = {vi.name: vi.type for vi in (*body.input, *body.output, *body.value_info)}
    for node in body.node:
        for attribute, inner in _subgraphs(node):
            yield from _walk(inner, f"{attribute} of {node.op_type} '{node.name}' in the {where}")
        yield node, where, types


def _outer_reads(body):
    """The names a subgraph reads from the graphs around it (ONNX lets a subgraph read any
    tensor in scope without listing it as an input)."""
    defined = {vi.name for vi in body.input} | {t.name for t in body.initializer}
    defined |= {t.values.name for t in body.sparse_initializer}
    reads = []
    for node in body.node:
        defined.update(node.output)
    for node in body.node:
        names = list(node.input)
        for _, inner in _subgraphs(node):
            names += _outer_reads(inner)
        reads += [n for n in names if n and n not in defined and n not in reads]
    return reads


def _topological(path, nodes, known):
    """Node indices in an order where every node follows the nodes it reads from, as close
    to the file's order as that allows (ONNX requires files sorted; not all are)."""
    producer = {}
    for k, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = k
    waiting, users = [0] * len(nodes), [[] for _ in nodes]
    for k, node in enumerate(nodes):
        sources = set()
        reads = [n for n in node.input if n]
        for _, body in _subgraphs(node):
            reads += _outer_reads(body)
        for name in reads:
            if name in producer:
                sources.add(producer[name])
            elif name not in known:
                label = f"node '{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"
                raise ModelLoadError(f"{path}: {label} reads '{name}', which no node, input or initializer of "
                                     "the graph makes: the file is damaged or incomplete")
        waiting[k] = len(sources)
        for source in sources:
            users[source].append(k)
    ready = [k for k in range(len(nodes)) if waiting[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for user in users[k]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise ModelLoadError(f"{path}: the graph's nodes form a cycle, so it has no topological order")
    return order


def _scope_names(nodes, initializers):
    """The name each node's scope is read from: its own without a leading '/', its first
    output's when it has none; a name borne twice gets `__K` (K from 1) on its later bearers.
    A name without a scope that reads initializers with one (tf2onnx names the nodes its
    optimiser makes `Conv__22`: a Conv2D with the BatchNormalization after it folded in, which
    reads `.../block1_conv2_1/convolution/merged_input:0` and `.../block1_bn_1/batchnorm/sub:0`)
    is placed in the scope of the last of them, whose value it computes (the bias comes from
    the BatchNormalization, the last of the layers folded)."""
    names, seen = [], {}
    for node in nodes:
        base = (node.name or next((n for n in node.output if n), node.op_type)).lstrip("/") or node.op_type
        if "/" not in base:
            scoped = [name.rpartition("/")[0] for name in node.input if name in initializers and "/" in name]
            if scoped:
                base = f"{scoped[-1]}/{base}"
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}__{count}")
    return names


def _dataset_paths(tensors):
    """Set each tensor's `dataset` (see the module's docstring): the cleaned name, with
    `#N` where it would clash with another's path or the groups above it."""
    cleaned = {}
    for t in tensors:
        parts = [p if p not in (".", "..") else "_" for p in t.name.split("/") if p]
        cleaned[t.name] = "/".join(parts) or "_"
    counts = {}
    for path in cleaned.values():
        counts[path] = counts.get(path, 0) + 1
    groups = {path.rsplit("/", 1)[0] for path in cleaned.values() if "/" in path}
    groups = {prefix for path in groups for prefix in _prefixes(path)}
    for t in tensors:
        path = cleaned[t.name]
        t.dataset = path if counts[path] == 1 and path not in groups else f"{path}#{t.position}"


def _prefixes(path):
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
