"""A model's computation as one frozen TensorFlow graph: every tensor by name, and a function
that computes exactly the chosen tensors.

The graph is a SavedModel signature, or a Keras model's forward pass traced in inference mode
(`model(x, training=False)` in a `tf.function` over the model's input signature), or a
TensorFlow 1 frozen GraphDef fed through its placeholders. Either way
its functions are inlined and its variables frozen into constants, so every op, down to the
pre-activation `BiasAdd` of a layer or a value a custom layer computes in `call` and never
returns, is a node with a name. Extraction imports that graph and prunes it to the chosen
tensors: only the ops they depend on run.

Tensor names are TensorFlow's: `<op name>:<output index>`. Their HDF5 datasets are
`/tensors/<tensor name>`, the name unchanged: each '/' opens a group, and the last component
always ends in `:K`, which no op (hence no group) name contains, so two tensors never map to
the same path.
"""

import heapq
from dataclasses import dataclass, field

from tensorprobe.backends.tensors import (  # noqa: F401 (the selection is read from here too)
    GROUP, OpInfo, TensorInfo, checked, filter_tensors, input_name, inputs_text, plan, resolve, select)
from tensorprobe.errors import InputError, ModelLoadError
from tensorprobe.text import dtype_name, shape_text, tf_error_line



@dataclass
class TensorGraph:
    """A frozen graph, its ops in topological order, and how to feed it."""

    graph_def: object  # tf.compat.v1.GraphDef
    ops: list  # [OpInfo], topological order
    tensors: list  # [TensorInfo], topological order
    inputs: list  # [tf.TensorSpec] in feed order, named after the model's inputs
    input_tensors: list  # the placeholders' tensor names, same order
    outputs: list  # [(output name, tensor name)]
    source: str  # what the graph is: "signature 'serving_default'", "traced forward pass"
    by_name: dict = field(default_factory=dict)
    fed: set = field(default_factory=set)  # names of the tensors that depend on the inputs
    in_loop: set = field(default_factory=set)  # names of the tensors made inside a while loop
    effects: list = field(default_factory=list)  # [effects.Effect]: refused to run, unless --unsafe
    path: str = ""  # the model file, for messages

    def __post_init__(self):
        self.by_name = {t.name: t for t in self.tensors}
        self.in_loop = {name for op in self.ops if op.loop_depth for name in op.outputs}
        fed = set(self.input_tensors)
        settled = False
        while not settled:  # a loop's back edge (NextIteration into Merge) carries values to an op
            settled = True  # before it in the order (a TensorList filled in the body): pass again
            for op in self.ops:
                if op.outputs and op.outputs[0] not in fed and any(name in fed for name in op.inputs):
                    fed.update(op.outputs)
                    settled = False
        self.fed = fed

    def op_types(self):
        return sorted({t.op for t in self.tensors})

    def extraction_function(self, names):
        """A function: list of input batches -> one array per tensor name (see below)."""
        return extraction_function(self, names)

    def why_not_dumpable(self, info):
        """Why a tensor cannot be dumped per sample (None when it can)."""
        if info.name not in self.fed:
            return "does not depend on the inputs (a constant), so it has no batch axis"
        if info.name in self.in_loop:
            return ("is computed inside a while loop, once per iteration; only values that leave the loop "
                    "can be fetched")
        if info.dtype in ("resource", "variant", "string"):
            return f"holds {info.dtype} values, which cannot be stored as an array"
        if info.shape is not None:
            batch_open = all(spec.shape.rank and spec.shape[0] is None for spec in self.inputs)
            if not info.shape or (batch_open and info.shape[0] is not None):
                return f"has static shape {shape_text(info.shape, '?')}, which has no batch axis"
        return None


def from_signature(signature):
    frozen = freeze(signature.function, f"signature '{signature.name}'")
    count = len(signature.inputs)
    placeholders = [t.name for t in frozen.inputs[:count]]
    outputs = [(name, t.name) for (name, _), t in zip(signature.outputs, frozen.outputs)]
    return _build(frozen.graph, signature.inputs, placeholders, outputs, f"signature '{signature.name}'")


def from_graph_def(graph_def, source, path, effects=()):
    """A frozen GraphDef (from the file `path`), fed through its Placeholder ops in graph
    order, each input named after its op; its outputs are the tensors no op reads (outside a
    while loop: a loop's unused `Merge`/`Switch` outputs are no results). `effects`:
    the ops acting outside the computation that it holds, which make it refuse to run."""
    import tensorflow as tf

    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
    except (ValueError, TypeError, tf.errors.OpError) as e:  # unknown op types, broken inputs
        raise ModelLoadError(f"{path}: cannot import the graph: {tf_error_line(e)}") from e
    operations = graph.get_operations()
    placeholders = [op.outputs[0] for op in operations if op.type == "Placeholder"]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.op.name) for t in placeholders]
    read = {t.name for op in operations for t in op.inputs}
    outputs = [(t.name[:-2] if t.name.endswith(":0") and len(op.outputs) == 1 else t.name, t.name)
               for op in operations if op.type not in ("Placeholder", "Const")
               for t in op.outputs if t.name not in read]
    built = _build(graph, specs, [t.name for t in placeholders], outputs, source)
    built.outputs = [(name, tensor) for name, tensor in outputs if tensor not in built.in_loop]
    built.effects, built.path = list(effects), path
    return built


def from_keras(model):
    """Trace `model` (Keras 3 or tf_keras) in inference mode over its input signature."""
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ModelLoadError(
            f"model '{model.name}' has no symbolic inputs, so its forward pass cannot be traced"
        )
    structure = _symbolic(model, "input")
    keys = sorted(structure) if isinstance(structure, dict) else [None] * len(inputs)
    specs = [  # the batch axis open, as the model's own may hold the size it was built with
        tf.TensorSpec((None, *tuple(t.shape)[1:]), dtype_name(t.dtype), name=input_name(key or t.name, i))
        for i, (t, key) in enumerate(zip(inputs, keys))
    ]

    @tf.function(input_signature=specs, autograph=False)
    def forward(*xs):
        return model(tf.nest.pack_sequence_as(structure, list(xs)), training=False)

    frozen = freeze(forward.get_concrete_function(), "the traced forward pass")
    placeholders = [t.name for t in frozen.inputs[: len(specs)]]
    output = _symbolic(model, "output")
    names = sorted(output) if isinstance(output, dict) else list(getattr(model, "output_names", None) or [])
    if len(names) != len(frozen.outputs):
        names = [f"output_{i}" for i in range(len(frozen.outputs))]
    outputs = [(name, t.name) for name, t in zip(names, frozen.outputs)]
    return _build(frozen.graph, specs, placeholders, outputs, "traced forward pass (inference mode)")


def _symbolic(model, name):
    """`model.input` or `model.output`: a tensor, a list, or a dict (keras-hub backbones); a
    Keras 3 Sequential, never called itself, has only `inputs` and `outputs`."""
    try:
        return getattr(model, name)
    except AttributeError:
        found = list(getattr(model, f"{name}s"))
        return found[0] if len(found) == 1 else found


def freeze(function, what):
    """The function with variables turned into constants and its calls inlined.

    TensorFlow has no public API for this in TF 2 (tf.compat.v1.graph_util works on
    sessions only); convert_variables_to_constants_v2 is the one TensorFlow's own tools use.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        return convert_variables_to_constants_v2(function)
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot freeze {what} into one graph: {tf_error_line(e)}") from e


def _build(graph, specs, placeholders, outputs, source):
    ops = _topological(graph.get_operations())
    infos, tensors, depth = [], [], {}
    for op in ops:
        for t in op.outputs:
            shape = None if t.shape.rank is None else [None if d is None else int(d) for d in t.shape.as_list()]
            tensors.append(TensorInfo(t.name, op.type, dtype_name(t.dtype), shape, len(tensors)))
        depth[op.name] = _loop_depth(op, depth)
        infos.append(OpInfo(op.name, op.type, [t.name for t in op.inputs], [t.name for t in op.outputs],
                            depth[op.name]))
    return TensorGraph(graph.as_graph_def(), infos, tensors, list(specs), placeholders, outputs, source)


def _topological(operations):
    """Ops in an order where every op follows its inputs (data and control), as close to the
    graph's own order as that allows. A lowered while loop's back edge (NextIteration into
    Merge) is the one cycle a TensorFlow graph may hold; it is left out of the order."""
    position = {op.name: i for i, op in enumerate(operations)}
    waiting = {}
    users = {op.name: [] for op in operations}
    for op in operations:
        sources = {t.op.name for t in op.inputs if t.op.type not in ("NextIteration", "RefNextIteration")}
        sources |= {c.name for c in op.control_inputs}
        waiting[op.name] = len(sources)
        for name in sources:
            users[name].append(op)
    ready = [(position[op.name], op) for op in operations if waiting[op.name] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, op = heapq.heappop(ready)
        order.append(op)
        for user in users[op.name]:
            waiting[user.name] -= 1
            if waiting[user.name] == 0:
                heapq.heappush(ready, (position[user.name], user))
    if len(order) != len(operations):  # a cycle TensorFlow itself would refuse to run
        raise ModelLoadError("the graph holds a cycle outside a while loop, so it has no topological order")
    return order


def _loop_depth(op, depth):
    """Frames of lowered while loops an op runs in: Enter opens one, Exit closes one, any
    other op runs in the deepest frame of its inputs (control inputs included, which puts a
    loop body's constants inside it)."""
    sources = [t.op.name for t in op.inputs] + [c.name for c in op.control_inputs]
    inner = max((depth.get(name, 0) for name in sources), default=0)
    if op.type in ("Enter", "RefEnter"):
        return inner + 1
    if op.type in ("Exit", "RefExit"):
        return max(inner - 1, 0)
    return inner


def extraction_function(graph, names):
    """A function: list of input batches (in `graph.inputs` order) -> one array per name.

    The frozen graph is imported once and pruned to `names`, so only the ops they depend on
    run; the batch axis stays open. It has the interface of probe.extraction_function's
    `run(batch_list)`.
    """
    import numpy as np
    import tensorflow as tf

    from tensorprobe.backends.tfgraph import effects

    effects.refuse(graph.path, graph.effects)
    graph_def = graph.graph_def

    def imports():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imports, [])
    element = wrapped.graph.as_graph_element
    try:
        pruned = wrapped.prune([element(n) for n in graph.input_tensors], [element(n) for n in names])
    except (KeyError, ValueError) as e:  # a fetch TensorFlow cannot reach from the inputs
        raise ModelLoadError(f"cannot prune the graph to {', '.join(names)}: {tf_error_line(e)}") from e
    specs = graph.inputs

    def run(batch, labels=None):
        if len(batch) != len(specs):
            raise InputError(f"the graph takes {len(specs)} inputs ({inputs_text(specs)}), got {len(batch)}")
        feeds = [tf.convert_to_tensor(checked(spec, np.asarray(x))) for spec, x in zip(specs, batch)]
        try:
            values = pruned(*feeds)
        except (ValueError, tf.errors.InvalidArgumentError) as e:
            raise InputError(f"the graph could not compute this batch: {tf_error_line(e)}") from e
        arrays = [v.numpy() for v in values]
        rows = len(batch[0]) if batch else 0
        for name, array in zip(names, arrays):
            if array.ndim == 0 or array.shape[0] != rows:
                raise InputError(
                    f"tensor '{name}' has shape {tuple(array.shape)} for a batch of {rows}: "
                    "it has no batch axis"
                )
        return arrays

    return run


