"""Keras layers found again in a frozen graph's name scopes, for SavedModels that hold only a
graph (Keras 3's `model.export()`).

Keras 3 runs each layer call inside a name scope named after the layer and made unique with a
`_N` suffix, so a SavedModel's op names read like
`StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv2_1/Relu`. The rule, applied to the
frozen graph of the signature:

1. Leading function-call components (`StatefulPartitionedCall`, `PartitionedCall`, with any
   `_N`) are dropped; ops under `Func/` (the inliner's plumbing) belong to no scope.
2. A scope *holds layers* (it is a model) when it has no ops of its own, at least one
   sub-scope, and every sub-scope name ends in `_N`. The model's scope is the one top-level
   scope that holds layers; its name is left out of paths (as `layers` on a .keras file lists
   what is inside the model). Several such top-level scopes are listed as top-level layers.
3. Every sub-scope of a scope that holds layers is a layer; its name without the last `_N`
   is the layer's name (`block1_conv2_1` -> `block1_conv2`), and the path joins the names
   (`vgg16/block1_conv2`). Two scopes with the same path are two calls of one layer (shared
   weights), in the order the graph runs them. A layer that holds layers is a nested model
   and is searched in turn; the sub-scopes of any other layer are its own ops' scopes.
4. A layer call's **output** is each tensor produced inside its scope (sub-scopes included)
   and read by an op outside it, in topological order: one tensor for most layers.
5. `params` counts the elements of the frozen variables read in the scope (its
   `ReadVariableOp`s); graphs do not say what was trainable.

A SavedModel with no scope that holds layers has no layer structure.
"""

import re
from dataclasses import dataclass, field

from tensorprobe.graph import LayerEntry
from tensorprobe.layers import LayerInfo, ModelInfo

CALL_WRAPPER = re.compile(r"(Stateful)?PartitionedCall(_\d+)?")
SUFFIXED = re.compile(r"(.+)_\d+")
INLINER = "Func"


@dataclass
class ScopeLayer(LayerEntry):
    """A layer found in the name scopes. `layer` is None; `calls` hold (TensorInfo, tensor
    name) pairs, so probe.select and probe.plan work on it unchanged."""

    op_type: str = ""  # the type of the op that computes the first output
    params: int = 0

    @property
    def name(self):
        return self.path.rsplit("/", 1)[-1]

    @property
    def class_name(self):
        return self.op_type


@dataclass
class ScopeGraph:
    """The layers of a frozen graph, for `layers` and `dump --layer`."""

    tensor_graph: object  # tensors.TensorGraph
    model_name: str
    entries: dict  # path -> ScopeLayer, parents before children, in graph order
    layer_of_op: dict  # op name -> path of the innermost layer whose scope holds it
    params: int  # elements of all frozen variables the graph reads

    @property
    def inputs(self):
        return self.tensor_graph.inputs

    def layer_of(self, tensor_name):
        return self.layer_of_op.get(tensor_name.rpartition(":")[0], "")

    def extraction_function(self, plan):
        """probe.extraction_function's counterpart: the plan's origins are tensor names."""
        from tensorprobe.tensors import extraction_function

        return extraction_function(self.tensor_graph, plan.origins)


@dataclass
class _Scope:
    name: str
    first: tuple  # graph order: where its first op that depends on the inputs runs
    children: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)  # ops directly in it
    all_ops: list = field(default_factory=list)  # ops in it and its sub-scopes

    def holds_layers(self):
        return not self.ops and bool(self.children) and all(SUFFIXED.fullmatch(n) for n in self.children)


def scope_path(op_name):
    """The scope components of an op, function-call prefixes removed; None for inliner ops."""
    parts = op_name.split("/")
    while len(parts) > 1 and CALL_WRAPPER.fullmatch(parts[0]):
        parts = parts[1:]
    if parts[0] == INLINER:
        return None
    return parts[:-1]


def layer_name(scope_name):
    m = SUFFIXED.fullmatch(scope_name)
    return m.group(1) if m else scope_name


def scope_graph(tensor_graph):
    """Find the layers of `tensor_graph` by the rule above."""
    root = _Scope("", (0, 0))
    for position, op in enumerate(tensor_graph.ops):
        parts = scope_path(op.name)
        if parts is None:
            continue
        # constants come first in a topological order; scopes go by their first computed op
        order = (0 if any(t in tensor_graph.fed for t in op.outputs) else 1, position)
        node = root
        node.all_ops.append(op)
        for part in parts:
            if part not in node.children:
                node.children[part] = _Scope(part, order)
            node = node.children[part]
            node.first = min(node.first, order)
            node.all_ops.append(op)
        node.ops.append(op)

    models = [c for c in root.children.values() if c.holds_layers()]
    builder = _Builder(tensor_graph)
    if len(models) == 1:
        builder.visit(models[0], prefix="", index="", depth=0, parent=None)
        model_name = layer_name(models[0].name)
    else:
        builder.visit_layers(models, prefix="", index="", depth=0, parent=None)
        model_name = ""
    return ScopeGraph(tensor_graph, model_name, builder.entries, builder.layer_of_op,
                      builder.total_params())


class _Builder:
    def __init__(self, tensor_graph):
        self.graph = tensor_graph
        self.entries = {}
        self.layer_of_op = {}
        self.producer = {}  # tensor name -> op name
        self.op_by_name = {}
        for op in tensor_graph.ops:
            self.op_by_name[op.name] = op
            for t in op.outputs:
                self.producer[t] = op.name
        self.readers = {}  # tensor name -> op names that read it
        for op in tensor_graph.ops:
            for t in op.inputs:
                self.readers.setdefault(t, []).append(op.name)

    def visit(self, container, prefix, index, depth, parent):
        """Register the layers inside `container`, a scope that holds layers."""
        children = sorted(container.children.values(), key=lambda s: s.first)
        self.visit_layers(children, prefix, index, depth, parent)

    def visit_layers(self, scopes, prefix, index, depth, parent):
        order = []  # paths at this level, in graph order
        for scope in sorted(scopes, key=lambda s: s.first):
            path = prefix + layer_name(scope.name)
            if path not in self.entries:
                order.append(path)
                self.entries[path] = ScopeLayer(path, f"{index}{len(order) - 1}", depth, None, parent, "graph")
                if parent is not None:
                    self.entries[parent].children.append(path)
            entry = self.entries[path]
            for op in scope.all_ops:
                self.layer_of_op[op.name] = path
            outputs = self.outputs_of(scope)
            if outputs:
                entry.calls.append([(self.graph.by_name[t], t) for t in outputs])
                if not entry.op_type:
                    entry.op_type = self.op_by_name[self.producer[outputs[0]]].type
            if len(entry.calls) <= 1:
                entry.params = self.params_of(scope.all_ops)
            if scope.holds_layers():
                self.visit(scope, path + "/", f"{entry.index}.", depth + 1, path)

    def outputs_of(self, scope):
        """The tensors made in `scope` and read outside it (rule 4), in topological order."""
        inside = {op.name for op in scope.all_ops}
        found = []
        for op in scope.all_ops:
            for t in op.outputs:
                if any(reader not in inside for reader in self.readers.get(t, ())):
                    found.append(t)
        return sorted(found, key=lambda t: self.graph.by_name[t].position)

    def params_of(self, ops):
        """Elements of the distinct frozen variables that `ops` read through a ReadVariableOp."""
        return sum(self._variables(ops).values())

    def total_params(self):
        return self.params_of(self.graph.ops)

    def _variables(self, ops):
        found = {}
        for op in ops:
            if op.name.rsplit("/", 1)[-1] != "ReadVariableOp" or not op.inputs:
                continue
            source = self.op_by_name.get(self.producer.get(op.inputs[0], ""))
            while source is not None and source.type == "Identity" and source.inputs:
                source = self.op_by_name.get(self.producer.get(source.inputs[0], ""))
            if source is not None and source.type == "Const":
                info = self.graph.by_name[source.outputs[0]]
                size = 1
                for d in info.shape or ():
                    size *= d or 0
                found[source.name] = size
        return found


def describe(graph):
    """ModelInfo for `tensorprobe layers`: output shapes of the first call, op type as the
    class, params from the frozen variables, trainable unknown (None)."""
    layers = []
    for entry in graph.entries.values():
        shapes = [info.shape for info, _ in entry.calls[0]] if entry.calls else None
        layers.append(
            LayerInfo(
                index=entry.index, path=entry.path, name=entry.name, class_name=entry.class_name,
                depth=entry.depth, output_shape=shapes, calls=len(entry.calls), params=entry.params,
                trainable=None, reach="graph",
            )
        )
    tg = graph.tensor_graph
    inputs = [(s.name, s.shape.as_list() if s.shape.rank is not None else [], s.dtype.name) for s in tg.inputs]
    outputs = []
    for name, tensor in tg.outputs:
        info = tg.by_name[tensor]
        outputs.append((name, info.shape or [], info.dtype))
    return ModelInfo(name=graph.model_name, inputs=inputs, outputs=outputs, params=graph.params,
                     trainable_params=None, layers=layers)
