"""Keras layers found again in a frozen graph's name scopes, for SavedModels that hold only a
graph (Keras 3's `model.export()`, tf.keras 2.x exports without keras_metadata.pb), and the
layers of TensorFlow 1 frozen graphs.

Keras runs each layer call inside a name scope named after the layer, so a SavedModel's op
names read like `StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv2_1/Relu`. Two naming
conventions exist, and a SavedModel says which one it follows (`naming`):

- **Keras 3** makes each scope unique with a `_N` suffix (`block1_conv2_1`, the model's own
  `transfer_1`), so a layer's name is its scope's without the last `_N`.
- **tf.keras 2.x** names scopes after the layers as they are (`model_1/conv2d_1/...`, where
  `conv2d_1` is the layer's real name), so a suffix proves nothing: a layer really named
  `dense_1` is `dense_1`. Such a SavedModel is recognised by its object graph, where tf.keras
  saves every layer as a `_tf_keras_*` object (Keras 3 never does; see
  `models.savedmodel.keras2_layers`), and the names of those layers tell which scopes are
  layers. The object graph is read, not the scopes, because the scopes alone cannot tell the
  two conventions apart: a tf.keras model named `model_1` whose layers are all auto-named
  `conv2d_1`, `dense_3`, ... reads exactly like a Keras 3 export.

The rule, applied to the frozen graph of the signature:

1. Leading function-call components (`StatefulPartitionedCall`, `PartitionedCall`, with any
   `_N`) are dropped; ops under `Func/` (the inliner's plumbing) belong to no scope.
2. A sub-scope *could be a layer* unless it is an op's own scope (its parent holds an op of
   the same name: `strided_slice/stack` belongs to the op `strided_slice`; TensorFlow names
   an op and its helper scope alike, and nothing else) or none of its ops is computed from
   the inputs (`Cast/ReadVariableOp` only reads a variable). A scope *holds layers* when
   - Keras 3: some sub-scopes that could be layers end in `_N`; they are its layers, except
     where a sub-scope of the same name without the suffix exists too (`einsum` and
     `einsum_1` inside a MultiHeadAttention: one TensorFlow scope entered twice, since
     Keras 3 leaves no layer's scope unsuffixed);
   - tf.keras 2.x: it is a model's scope (its name is a saved model's), and its layers are
     all the sub-scopes that could be layers (a TFOpLambda such as `tf.__operators__.add`
     has no saved name); or some sub-scopes that could be layers bear the name of a saved
     layer (the sub-layers of a custom layer), and those are its layers; other sub-scopes
     (`batchnorm` inside a BatchNormalization) are its own ops.
   A scope that holds layers may also hold ops of its own (inline ops of a model such as
   `x[:, 0]` or `x * 2.0`, keras-hub's `bert_backbone_1/strided_slice`): they belong to it,
   not to any of its layers. The model's scope is the one top-level scope that holds layers;
   its name is left out of paths (as `layers` on a .keras file lists what is inside the
   model). Several such top-level scopes are listed as top-level layers.
3. A layer's name is its scope's (Keras 3: without the last `_N`, `block1_conv2_1` ->
   `block1_conv2`), and the path joins the names (`vgg16/block1_conv2`). Keras 3 only: a
   sub-layer that a layer makes without a name (MultiHeadAttention's `softmax`, keras-hub's
   `rotary_embedding`) is named by Keras from a counter over the whole process, `softmax` in
   one process and `softmax_3` in the next; a .keras file's listing names such sub-layers by
   class, numbered among siblings (`graph._stable_names`), the same in every process. The
   graph has no classes, so its rule is: inside a layer that computes something of its own
   beside its layers (a computed op outside their scopes: a custom layer's `call`, with its
   residual add or transpose), a layer whose name reads as a counter-numbered one (lowercase,
   `_N` with N >= 1: `softmax_3`) and whose base (`softmax`) no sibling layer bears, as its
   name or as its base, is named by its base: `transformer_layer_1/self_attention_layer/
   softmax`, as in the .keras file. The model's own layers, and those of a scope that only
   runs its layers (a nested Sequential), keep the names their config gives them
   (`sequential/dense_3`). Left as they are: siblings that share a base (`dense_4`,
   `dense_7`: their order among siblings is not known), the sub-layers of a custom layer
   that only chains them, and tf.keras 2.x names; a sub-layer named `proj_2` on purpose,
   alone of its base in a custom layer, is listed as `proj`.
   Layers are listed in the order the graph computes them: siblings by the topological
   position of their first output (rule 4), not of their first op (a block's first op may
   prepare a mask from an input before anything else runs). Two scopes with the
   same path are two calls of one layer (shared weights), in the order the graph runs them.
   tf.keras 2.x runs every call of a layer in the same scope: there the scope's computed ops
   are split into the parts that pass no tensor to each other, and when there are several
   and all do the same computation (the same op types in the same sub-scopes, `_N` aside),
   each is a call (a Siamese net's encoder on its two inputs); otherwise the scope is one
   call (calls chained as `f(f(x))` are one call, whose output is the last). A layer that
   holds layers is a nested model (or a custom layer with sub-layers) and is searched in
   turn.
4. A layer call's **output** is each tensor produced inside its scope (sub-scopes included)
   and read by an op outside it, in topological order: one tensor for most layers. The
   inliner's `Func/` ops only pass values on, so a read is where the value goes through them
   (an LSTM's loop body reading the LSTM's weights reads inside the LSTM's scope). Only values
   of the samples count (computed from the inputs, with a batch axis, numbers): a value made
   inside a while loop is never an output (each iteration makes one), so a recurrent layer's
   output is what its scope computes from the loop's `Exit` (`TensorListStack`, `transpose`);
   nor are a TensorList or TensorArray handed to a loop, or a weight another layer reads (tied
   embeddings). A scope with no such value is listed without output.
5. `params` counts the elements of the frozen variables read in the scope (its
   `ReadVariableOp`s); graphs do not say what was trainable.

A SavedModel with no scope that holds layers has no layer structure.

A **TensorFlow 1** frozen graph (`naming` TF1) has no convention to read: `tf.layers`,
`tf.variable_scope` and slim name scopes after layers (`dense/MatMul`, `conv1/Relu`, the
second dense layer `dense_1`), but so do TensorFlow's own helpers. So every scope that could
be a layer (rule 2's test) is one, at every depth, named as it is (no `_N` is removed); the
top-level ones are the top-level layers (there is no model scope), and ops outside any scope
(`concat`, the placeholders) belong to none. Rules 3 to 5 hold unchanged, with one call per
scope; `params` also counts the constants read through a TF 1 variable's `<name>/read`.
"""

import re
from dataclasses import dataclass, field

from tensorprobe.backends.base import LayerEntry, LayerInfo, ModelInfo

CALL_WRAPPER = re.compile(r"(Stateful)?PartitionedCall(_\d+)?")
SUFFIXED = re.compile(r"(.+)_\d+")
AUTO_NAMED = re.compile(r"([a-z][a-z0-9_]*)_[1-9]\d*")  # Keras' auto names: snake_case, _N from 1
READ_VARIABLE = re.compile(r"ReadVariableOp(_\d+)?|read")  # `read`: a TF 1 (reference) variable's
INLINER = "Func"


@dataclass(frozen=True)
class Naming:
    """How a graph's scopes name layers (rule 2): Keras 3's `_N` suffixes, or tf.keras 2.x
    names as they are, with the names of the layers and models the SavedModel saves."""

    keras2: bool = False
    layers: frozenset = frozenset()
    models: frozenset = frozenset()
    tf1: bool = False  # a TensorFlow 1 graph: every scope that could be a layer is one

    def layer_name(self, scope_name):
        if self.keras2 or self.tf1:
            return scope_name
        m = SUFFIXED.fullmatch(scope_name)
        return m.group(1) if m else scope_name


KERAS3 = Naming()
TF1 = Naming(tf1=True)


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

    def dataset_attributes(self, symbolic):
        return symbolic.layer_attributes


@dataclass
class ScopeGraph:
    """The layers of a frozen graph, for `layers` and `dump --layer`."""

    tensor_graph: object  # tensors.TensorGraph
    model_name: str
    entries: dict  # path -> ScopeLayer, parents before children, in graph order
    layer_of_op: dict  # op name -> path of the innermost layer whose scope holds it
    params: int  # elements of all frozen variables the graph reads
    notes: list = field(default_factory=list)  # footer lines for `tensorprobe layers`

    @property
    def inputs(self):
        return self.tensor_graph.inputs

    def layer_of(self, tensor_name):
        return self.layer_of_op.get(tensor_name.rpartition(":")[0], "")

    def extraction_function(self, plan):
        """probe.extraction_function's counterpart: the plan's origins are the tensor graph's."""
        return self.tensor_graph.extraction_function(plan.origins)


@dataclass
class _Scope:
    name: str
    parts: tuple = ()  # its components from the top: ("model_1", "conv2d_1")
    children: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)  # ops directly in it
    all_ops: list = field(default_factory=list)  # ops in it and its sub-scopes
    computed: bool = False  # some op in it or its sub-scopes is computed from the inputs


def scope_path(op_name):
    """The scope components of an op, function-call prefixes removed; None for inliner ops."""
    parts = op_name.split("/")
    while len(parts) > 1 and CALL_WRAPPER.fullmatch(parts[0]):
        parts = parts[1:]
    if parts[0] == INLINER:
        return None
    return parts[:-1]


def scope_tree(items):
    """The root of the tree of name scopes over `items`, (op name, computed, item) tuples:
    each scope lists the items directly in it (`ops`) and in it or its sub-scopes (`all_ops`);
    `computed` says whether any is computed from the inputs.
    Names under `Func/` (the inliner's plumbing) belong to no scope. An item only needs a
    `name` attribute, its op name, for `layer_scopes`."""
    root = _Scope("")
    for name, computed, item in items:
        parts = scope_path(name)
        if parts is None:
            continue
        node = root
        node.all_ops.append(item)
        for depth, part in enumerate(parts):
            if part not in node.children:
                node.children[part] = _Scope(part, tuple(parts[: depth + 1]))
            node = node.children[part]
            node.all_ops.append(item)
            node.computed = node.computed or computed
        node.ops.append(item)
    return root


def layer_scopes(scope, naming):
    """The sub-scopes of `scope` that are its layers (rule 2); [] when it holds none."""
    own = {op.name.rsplit("/", 1)[-1] for op in scope.ops}
    candidates = [c for c in scope.children.values() if c.name not in own and c.computed]
    if naming.tf1:
        return candidates
    if not naming.keras2:
        # `einsum` beside `einsum_1`: one TensorFlow scope entered twice, never a layer
        bare = {name for name in scope.children if not SUFFIXED.fullmatch(name)}
        return [c for c in candidates if c.name not in bare and naming.layer_name(c.name) not in bare]
    if scope.name in naming.models:
        return candidates
    return [c for c in candidates if c.name in naming.layers]


def find_layers(tensor_graph, naming=KERAS3):
    """Find the layers of a frozen TensorFlow graph by the rule above."""
    root = scope_tree((op.name, any(t in tensor_graph.fed for t in op.outputs), op) for op in tensor_graph.ops)

    builder = _Builder(tensor_graph, naming)
    models = [c for c in root.children.values() if builder.layer_scopes(c)]
    if naming.tf1:  # the top-level scopes are the layers
        builder.visit_layers(builder.layer_scopes(root), prefix="", index="", depth=0, parent=None)
        model_name = ""
    elif len(models) == 1:  # the model's layers: named by its config, as they are
        builder.visit_layers(builder.layer_scopes(models[0]), prefix="", index="", depth=0, parent=None)
        model_name = naming.layer_name(models[0].name)
    else:
        builder.visit_layers(models, prefix="", index="", depth=0, parent=None)
        model_name = ""
    return ScopeGraph(tensor_graph, model_name, builder.entries, builder.layer_of_op,
                      builder.total_params())


class _Builder:
    def __init__(self, tensor_graph, naming):
        self.graph = tensor_graph
        self.naming = naming
        self.entries = {}
        self.layer_of_op = {}
        self.producer = {}  # tensor name -> op name
        self.op_by_name = {}
        for op in tensor_graph.ops:
            self.op_by_name[op.name] = op
            for t in op.outputs:
                self.producer[t] = op.name
        readers = {}  # tensor name -> op names that read it
        for op in tensor_graph.ops:
            for t in op.inputs:
                readers.setdefault(t, []).append(op.name)
        returned = {t for _, t in tensor_graph.outputs}
        self.readers = {t: self._past_inliner(t, readers, returned) for op in tensor_graph.ops for t in op.outputs}

    def _past_inliner(self, tensor, readers, returned):
        """The scoped ops that read `tensor`, looking through the inliner's plumbing: a
        `Func/...` op (an Identity that passes a value into or out of an inlined function,
        a while loop's body or condition) is not a reader but hands the value on to its own
        readers, so an LSTM's loop body reading a tensor of the LSTM's scope is a read inside
        that scope. A tensor the graph returns (through such plumbing or not) is also read
        outside every scope (`None`)."""
        found, todo, seen = [], [tensor], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in returned:
                found.append(None)
            for reader in readers.get(t, ()):
                if scope_path(reader) is None:
                    todo.extend(self.op_by_name[reader].outputs)
                else:
                    found.append(reader)
        return found

    def layer_scopes(self, scope):
        return layer_scopes(scope, self.naming)

    def visit_layers(self, scopes, prefix, index, depth, parent, stable=False):
        """Register the layers whose scopes are `scopes` (siblings), in graph order, and
        what is inside them; `stable`: name them by rule 3's stable names."""
        order = []  # paths at this level, in graph order
        names = self.names_of(scopes, stable)
        for scope in sorted(scopes, key=self.position):
            path = prefix + names[scope.name]
            if path not in self.entries:
                order.append(path)
                self.entries[path] = ScopeLayer(path, f"{index}{len(order) - 1}", depth, None, parent, "graph")
                if parent is not None:
                    self.entries[parent].children.append(path)
            entry = self.entries[path]
            for op in scope.all_ops:
                self.layer_of_op[op.name] = path
            if not entry.calls:
                entry.params = self.params_of(scope.all_ops)
            for outputs in self.calls_of(scope):
                entry.calls.append([(self.graph.by_name[t], t) for t in outputs])
                if not entry.op_type:
                    entry.op_type = self.op_by_name[self.producer[outputs[0]]].type
            layers = self.layer_scopes(scope)
            if layers:
                self.visit_layers(layers, path + "/", f"{entry.index}.", depth + 1, path,
                                  stable=not self.naming.keras2 and self.computes_itself(scope, layers))

    def position(self, scope):
        """Where a layer scope comes in graph order (rule 3): the topological position of
        its first output; of its first computed tensor when nothing outside reads it."""
        outputs = self.outputs_of(scope)
        if outputs:
            return self.graph.by_name[outputs[0]].position
        made = [self.graph.by_name[t].position for op in scope.all_ops for t in op.outputs if t in self.graph.fed]
        return min(made, default=len(self.graph.tensors))

    def computes_itself(self, scope, layers):
        """Whether `scope` computes something outside the scopes of its `layers`: a custom
        layer's `call` does (a residual add, a transpose), a model that only runs its layers
        does not."""
        inside = {op.name for layer in layers for op in layer.all_ops}
        return any(op.name not in inside and any(t in self.graph.fed for t in op.outputs) for op in scope.all_ops)

    def names_of(self, scopes, stable):
        """scope name -> layer name for sibling layer scopes (rule 3). With `stable`, a name
        that Keras could have numbered from its process-wide counter (`softmax_3`: lowercase,
        `_N` with N >= 1) and whose base (`softmax`) no other sibling has, bare or numbered,
        is named by its base."""
        names = {scope.name: self.naming.layer_name(scope.name) for scope in scopes}
        if not stable:
            return names
        taken = set(names.values())
        bases = {}  # base -> the distinct layer names that have it
        for name in taken:
            m = AUTO_NAMED.fullmatch(name)
            bases.setdefault(m.group(1) if m else name, set()).add(name)
        for scope_name, name in names.items():
            m = AUTO_NAMED.fullmatch(name)
            if m and bases[m.group(1)] == {name} and m.group(1) not in taken:
                names[scope_name] = m.group(1)
        return names

    def calls_of(self, scope):
        """The outputs of each call of the layer that `scope` runs (rules 3 and 4): one call
        per scope, except that a tf.keras 2.x scope whose computed ops fall into several
        connected parts doing the same computation (the same op types in the same sub-scopes,
        `_N` suffixes aside) holds one call per part, in graph order."""
        outputs = self.outputs_of(scope)
        if not self.naming.keras2 or len(outputs) < 2:
            return [outputs] if outputs else []
        parts = self._connected_parts(scope)
        part_of = {name: i for i, part in enumerate(parts) for name in part}
        calls = [[] for _ in parts]
        for t in outputs:
            if self.producer[t] not in part_of:
                return [outputs]
            calls[part_of[self.producer[t]]].append(t)
        if len(parts) < 2 or not all(calls) or len({self._computation(scope, p) for p in parts}) > 1:
            return [outputs]
        return calls

    def _connected_parts(self, scope):
        """The ops of `scope` computed from the inputs, grouped into parts that are connected
        by the tensors they pass each other; parts in graph order."""
        fed = [op for op in scope.all_ops if any(t in self.graph.fed for t in op.outputs)]
        root = {op.name: op.name for op in fed}

        def find(name):
            while root[name] != name:
                root[name] = root[root[name]]
                name = root[name]
            return name

        for op in fed:
            for t in op.inputs:
                source = self.producer.get(t)
                if source in root:
                    root[find(source)] = find(op.name)
        parts = {}
        for op in fed:  # graph order, so parts come in the order their first op runs
            parts.setdefault(find(op.name), []).append(op.name)
        return list(parts.values())

    def _computation(self, scope, part):
        """What a part computes, up to names: its ops' types, each with its sub-scope in
        `scope`, `_N` suffixes removed."""
        found = []
        for name in part:
            inner = scope_path(name)[len(scope.parts):]
            found.append((tuple(KERAS3.layer_name(p) for p in inner), self.op_by_name[name].type))
        return tuple(sorted(found))

    def outputs_of(self, scope):
        """The tensors made in `scope` and read outside it (rule 4), in topological order,
        that are values of the samples (`TensorGraph.why_not_dumpable`): not a value made
        inside a while loop (an LSTM's step: only what leaves the loop's `Exit` is), a
        TensorList or TensorArray handle passed to a loop, a weight read by another layer."""
        inside = {op.name for op in scope.all_ops}
        found = []
        for op in scope.all_ops:
            for t in op.outputs:
                if any(reader not in inside for reader in self.readers[t]) and \
                        self.graph.why_not_dumpable(self.graph.by_name[t]) is None:
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
            if not READ_VARIABLE.fullmatch(op.name.rsplit("/", 1)[-1]) or not op.inputs:
                continue
            source = self.op_by_name.get(self.producer.get(op.inputs[0], ""))
            # through Identity ops, and the Enter that hands a weight to a while loop's body
            while source is not None and source.type in ("Identity", "Enter", "RefEnter") and source.inputs:
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
                trainable=None, reach=entry.reach, fused_into=entry.fused_into,
            )
        )
    tg = graph.tensor_graph
    inputs = [(s.name, s.shape.as_list() if s.shape.rank is not None else [], s.dtype.name) for s in tg.inputs]
    outputs = []
    for name, tensor in tg.outputs:
        info = tg.by_name[tensor]
        outputs.append((name, info.shape or [], info.dtype))
    return ModelInfo(name=graph.model_name, inputs=inputs, outputs=outputs, params=graph.params,
                     trainable_params=None, layers=layers, notes=list(graph.notes))
