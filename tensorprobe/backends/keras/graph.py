"""Walk a model's layers, nested models and custom layers included, as one graph from the
outer inputs.

Keras cannot build `Model(outer.inputs, outer.get_layer("vgg16").get_layer("block1_conv2").output)`:
that output belongs to the nested model's own graph, which is not connected to the outer
inputs. So tensorprobe walks the graph itself: every node of the outer model is called
again, and a nested model (Functional or Sequential) is entered and its own nodes are called
on the tensors that reach it. The same layer objects are called, so the weights are the
model's own.

Layers with no static graph (custom layers that call sub-layers in `call`, subclassed
models) are called whole, as one node; the outputs of their sub-layers ("runtime" layers)
are recorded while they run, by wrapping the chosen sub-layers' `call` for the duration of
that node. A `call` decorated with `tf.function` is run as plain Python for that time, so
the recorded tensors belong to the caller's graph and nothing symbolic escapes.

The walk runs twice. `unroll` walks on symbolic tensors: it records every call of every
layer at any depth (its output shapes, for `tensorprobe layers`) and which node each node
reads from. `Graph.evaluate` walks on real tensors inside a compiled function and calls only
the nodes that the requested outputs depend on, so a shallow layer costs a fraction of the
forward pass. (A flattened `keras.Model` over the re-traced tensors cannot be built in
general: Keras refuses two layers of the same name, and nested models often reuse names.)

Walking a functional graph needs Keras internals (`_nodes_by_depth` and the node objects,
`_flatten_layers` for the sub-layers of a custom layer): they are kept to `_keras3_nodes`,
`_tf_keras_nodes` and `_sublayers` below, and tests/test_graph.py fails loudly if a Keras
upgrade changes them. So is telling the names Keras generated from the names an author gave
(`generated_names`, checked in tests/test_corpus_walk.py).
"""

import contextlib
import functools
import heapq
import weakref
from dataclasses import dataclass

from tensorprobe.backends.base import LayerEntry

# A node key is the tuple of node positions from the outer model down to the node, so that a
# nested model called twice has distinct keys for its two calls; the k-th recorded call of the
# runtime layer at `path` inside the node `key` has the key `key + (path, k)`. A value's
# origin is (key, output position); the model's own inputs have the origin (None, position).


@dataclass
class Graph:
    model: object
    keras: object  # the module that built the model: keras (3) or tf_keras
    inputs: list  # the outer model's symbolic inputs
    outputs: list  # the origins of the model's outputs
    entries: dict  # path -> LayerEntry, in `.layers` order, parents before children
    reads: dict  # node key -> set of node keys whose outputs it reads
    symbolic: dict  # origin -> symbolic tensor
    calls: dict = None  # node key -> NodeCall of a node called whole (not one recorded inside another)

    def tensor(self, origin):
        """The symbolic tensor at `origin` (its shape and dtype)."""
        key, j = origin
        return self.inputs[j] if key is None else self.symbolic[origin]

    def input_names(self):
        """A name per model input: the keys of a model called with a dict (keras-hub's
        `token_ids`, `padding_mask`), else each input's own name."""
        structure = getattr(self.model, "input", None) if _nodes_of(self.keras, self.model) else None
        if isinstance(structure, dict) and len(structure) == len(self.inputs):
            return sorted(structure)  # the order the inputs are flattened in
        return [producer_name(t) for t in self.inputs]

    def output_names(self):
        """A name per model output: the keys of a model that returns a dict (keras-hub's
        `pooled_output`, `sequence_output`), else the layer that computes each."""
        try:
            structure = self.model.output
        except (AttributeError, ValueError):  # a subclassed model has no symbolic output
            structure = None
        if isinstance(structure, dict) and len(structure) == len(self.outputs):
            return sorted(structure)  # the order the outputs are flattened in
        return [producer_name(self.tensor(origin)) for origin in self.outputs]

    def data_format(self):
        """'channels_first' or 'channels_last' as the first layer with a `data_format`
        (Conv2D, pooling...) says; None when no layer says."""
        for entry in self.entries.values():
            fmt = getattr(entry.layer, "data_format", None)
            if fmt in ("channels_first", "channels_last"):
                return fmt
        return None

    def needed(self, origins):
        """The node keys that computing `origins` requires."""
        todo = [key for key, _ in origins if key is not None]
        seen = set()
        while todo:
            key = todo.pop()
            if key not in seen:
                seen.add(key)
                todo.extend(self.reads.get(key, ()))
        return seen

    def evaluate(self, inputs, origins, needed, watch=None, training=False, edit=None, widen=None):
        """The values at `origins` for real input tensors, calling only the `needed` nodes.

        `watch(tensor)` is called on each value at `origins` as soon as it exists, before any
        layer reads it (a GradientTape's watch, for gradients with respect to activations).
        `edit` ({origin: function(tensor) -> tensor}, interventions) replaces the value at each
        of its origins as soon as it is produced, before `watch` and before any layer reads
        it: every later layer, and `origins`, get what the function returned. A runtime
        layer's origin is edited only if its key is among the `needed`.

        `widen` ((tile, node keys), for patching sweeps) lets the edits return more rows than
        the batch (one block of rows per variant): from there on, a node that reads a widened
        value reads every other value tiled by `tile(tensor)` too, so the layers before the
        edit run once on the batch; the nodes `node keys` get all their inputs tiled (a
        runtime layer's edit inside them then receives widened values).
        """
        walker = _Walker(self.keras, self.entries, needed, watch, set(origins), training, edit, widen)
        walker.walk(self.model, inputs)
        for path, traced, parent in walker.overrun[:1]:
            from tensorprobe.errors import UsageError

            raise UsageError(f"layer '{path}' runs more often for these inputs than the {traced} time(s) "
                             "it ran when traced with the model's open input axes (how often depends on "
                             f"an input's size, as in a TimeDistributed); dump '{parent}' instead")
        values = [inputs[j] if key is None else walker.values.get((key, j)) for key, j in origins]
        if any(v is None for v in values):
            raise RuntimeError("a layer recorded at run time was called fewer times than when traced")
        return [self._dense_value(v, origin) for v, origin in zip(values, origins)]

    def _dense_value(self, value, origin):
        """`value` as an array holds it. A tf.SparseTensor (a StringLookup with sparse=True
        returns one, though Keras' symbolic output says dense) becomes its dense tensor, zeros
        where it has no entry, as the layers that read it take it: no value is invented. A
        tf.RaggedTensor that the symbolic walk did not see (see `_dense`) cannot be stored."""
        import tensorflow as tf

        if isinstance(value, tf.SparseTensor):
            return tf.sparse.to_dense(value)
        if isinstance(value, tf.RaggedTensor):
            from tensorprobe.errors import UsageError

            path = next((p for p, e in self.entries.items() if any(o == origin for c in e.calls for _, o in c)),
                        "?")
            raise UsageError(f"layer '{path}' returns a tf.RaggedTensor (its symbolic output says dense), "
                             "which has no array of one shape to store; leave it out and dump the layer that "
                             "makes it dense")
        return value


def unroll(model, keras):
    """Walk `model` (built by the module `keras`: keras 3 or tf_keras) on symbolic tensors."""
    entries = {}
    static = _nodes_of(keras, model) is not None
    _register(keras, entries, model, "", "", 0, None, "graph" if static else "runtime")
    if static:
        inputs = [_batch_open(keras, t) for t in model.inputs]
    else:  # a subclassed model: inputs from the shape it was built with
        shape = model.get_build_config()["input_shape"]
        inputs = [keras.Input(batch_shape=(None, *shape[1:]), dtype=model.dtype, name="input")]
    walker = _Walker(keras, entries)
    outputs = walker.walk(model, inputs)
    return Graph(model, keras, inputs, [o for _, o in outputs], entries, walker.reads, walker.values,
                 walker.calls)


@dataclass
class NodeCall:
    """How to call one node again on values of its own choosing (`validate` replays a stored
    layer on its stored inputs): `arguments`, the origins of the values it reads, in order;
    `invoke(values, training)`, one value per argument -> its outputs, flat (output j is the
    origin (key, j))."""

    layer: object
    arguments: list
    invoke: object


def _batch_open(keras, tensor):
    """A model input, its batch axis open: a model built by calling it once on an array
    (`model(np.zeros((1, 6)))`, the usual way without an `Input`) records that array's
    batch size in its input, yet Keras runs it on batches of any size, and so does the walk."""
    if len(tensor.shape) == 0 or tensor.shape[0] is None:
        return tensor
    return keras.Input(batch_shape=(None, *tensor.shape[1:]), dtype=tensor.dtype, name=producer_name(tensor),
                       sparse=getattr(tensor, "sparse", False), ragged=getattr(tensor, "ragged", False))


def _register(keras, entries, container, prefix, index, depth, parent, reach):
    layers = 0  # the index is the position in `.layers`; an inline operation has none
    children = _children(keras, container)
    names = [c.name for c in children] if reach == "graph" else _stable_names(children)
    for layer, name in zip(children, names):
        path = prefix + name
        position = ""
        if is_layer(keras, layer):
            position, layers = f"{index}{layers}", layers + 1
        entries[path] = LayerEntry(path, position, depth, layer, parent, reach)
        if parent is not None:
            entries[parent].children.append(path)
        inner = "graph" if reach == "graph" and _nodes_of(keras, layer) is not None else "runtime"
        _register(keras, entries, layer, path + "/", f"{position}.", depth + 1, path, inner)


def _stable_names(layers):
    """Names for the sub-layers of a custom layer that do not depend on the process.

    A sub-layer created without a name (MultiHeadAttention's `softmax`, `Dense(4)` in a
    custom layer's `__init__`) gets a name from a counter over the whole process, so the
    same model loads with `softmax` in one process and `softmax_4` in another. The layers
    Keras named so while tensorprobe loaded the file (`generated_names`) are named again by
    the class they were named by, numbered among such siblings in order (`softmax`,
    `softmax_1`), as Keras would name them in a fresh process, passing over any name a
    sibling was given. A name the model's author gave (keras-hub's `mlp/dense_1`, a
    Dense), and every name of a model built in memory, whose origin is not known, stays as
    it is."""
    given = {layer.name for layer in layers if layer not in _GENERATED}
    names, count = [], {}
    for layer in layers:
        base = _GENERATED.get(layer)
        if base is None:
            names.append(layer.name)
            continue
        k = count.get(base, 0)
        while (name := f"{base}_{k}" if k else base) in given:
            k += 1
        count[base] = k + 1
        names.append(name)
    return names


_GENERATED = weakref.WeakKeyDictionary()  # layer -> the base Keras numbered its name from


@contextlib.contextmanager
def generated_names(keras):
    """Keras internals: while a model is built (a file loaded), record each layer that Keras
    names itself from its counter (`dense_3`: the layer was made without `name=`), with the
    base it numbered, for `_stable_names`. A name alone cannot say it: keras-hub's MLP names
    its Dense layers `dense_1` and `dense_2` itself. Keras 3 names an operation in
    `Operation.__init__(name=None)`, tf_keras a layer in `Layer._init_set_name(name)`."""
    if _legacy(keras):
        from tf_keras.src.engine.base_layer import Layer as owner
        from tf_keras.src.utils.generic_utils import to_snake_case

        method, original = "_init_set_name", owner._init_set_name

        def naming(self, name, zero_based=True):
            original(self, name, zero_based=zero_based)
            if name is None:
                _GENERATED[self] = to_snake_case(type(self).__name__)
    else:
        from keras.src.ops.operation import Operation as owner
        from keras.src.utils.naming import to_snake_case

        # the same signature: Keras reads it (getfullargspec) for classes that inherit it
        method, original = "__init__", owner.__init__

        def naming(self, name=None):
            original(self, name=name)
            if name is None:
                _GENERATED[self] = to_snake_case(type(self).__name__)

    setattr(owner, method, naming)
    try:
        yield
    finally:
        setattr(owner, method, original)


def _children(keras, layer):
    if _nodes_of(keras, layer) is not None or isinstance(layer, keras.Model):
        return _graph_children(keras, layer)
    return _sublayers(layer) if is_layer(keras, layer) else []


def is_layer(keras, operation):
    """Whether a node's operation is a layer, else a Keras 3 operation written inline
    (`x + y`, `keras.ops.relu(x)`), which has no weights, sub-layers or `training`."""
    return isinstance(operation, keras.layers.Layer)


class _Walker:
    def __init__(self, keras, entries, needed=None, watch=None, watched=(), training=False, edit=None,
                 widen=None):
        self.keras = keras
        self.entries = entries
        self.symbolic = needed is None  # the first walk: record everything
        self.needed = needed  # node keys to call; None calls every node
        self.watch, self.watched = watch, watched
        self.edit = edit or {}  # origin -> function(tensor) -> the tensor every reader gets
        self.tile, self.widened_at = widen if widen is not None else (None, ())
        self.wide = {}  # id -> each value that has the widened rows (held, so that no id is reused)
        self.tiled = {}  # origin -> its value tiled
        self.training = training
        self.reads = {}
        self.calls = {}  # node key -> NodeCall (the symbolic walk)
        self.values = {}  # origin -> tensor, for every node called
        self.overrun = []  # (path, calls traced, parent) of runtime layers called more often

    def walk(self, model, inputs):
        """Call the model on `inputs`; return its flat outputs as (tensor, origin)."""
        fed = [(self._produced(x, (None, i)), (None, i)) for i, x in enumerate(inputs)]
        if _nodes_of(self.keras, model) is not None:
            return self.run(model, fed, "", ())
        outputs, _ = self._call_leaf(
            model, "", (0,), fed, lambda values: model(*values, training=self.training)
        )
        return outputs

    def _widened(self, arguments, node_key):
        """A node's arguments, each tiled (`widen`) where another is widened, or the node is
        one whose inputs are all widened."""
        if self.tile is None or not (node_key in self.widened_at or self._reads_wide(arguments)):
            return arguments
        found = []
        for x, origin in arguments:
            if id(x) not in self.wide:
                if origin not in self.tiled:
                    self.tiled[origin] = self._mark_wide(self.tile(x))
                x = self.tiled[origin]
            found.append((x, origin))
        return found

    def _reads_wide(self, arguments):
        return any(id(x) in self.wide for x, _ in arguments)

    def _mark_wide(self, tensor):
        self.wide[id(tensor)] = tensor
        return tensor

    def _produced(self, tensor, origin):
        """The value at `origin` as every reader gets it: edited (`edit`), then watched."""
        if origin in self.edit:
            tensor = self.edit[origin](tensor)
            if self.tile is not None:
                self._mark_wide(tensor)
        if self.watch is not None and origin in self.watched:
            self.watch(tensor)
        return tensor

    def run(self, container, inputs, prefix, key):
        """Call `container`'s nodes on `inputs`, a flat list of (tensor, origin); return its
        flat outputs as (tensor, origin), None where an output was not needed."""
        nodes, container_inputs, container_outputs = _nodes_of(self.keras, container)
        values = {id(t): v for t, v in zip(container_inputs, inputs)}
        for position, (layer, node_inputs, call, node_outputs) in enumerate(nodes):
            if any(id(t) not in values for t in node_inputs):
                continue  # not needed, or not computable from these inputs (Keras skips it too)
            path = prefix + layer.name
            node_key = key + (position,)
            arguments = self._widened([values[id(t)] for t in node_inputs], node_key)
            names = None
            if _nodes_of(self.keras, layer) is not None:
                outputs = self.run(layer, arguments, path + "/", node_key)
            else:
                outputs, names = self._call_leaf(
                    layer, path + "/", node_key, arguments,
                    lambda values, t=node_inputs, c=call: c(
                        {id(k): v for k, v in zip(t, values)}, self.training
                    ),
                )
                if outputs is None:
                    continue  # not needed
            entry = self.entries.get(path)
            if self.symbolic and entry is not None and all(o is not None for o in outputs) \
                    and _dense(entry, outputs):
                entry.calls.append(outputs)
                entry.output_names = names
            for t, v in zip(node_outputs, outputs):
                if v is not None:
                    values[id(t)] = v
        if self.symbolic:
            for t, v in zip(container_inputs, inputs):  # an input layer's output: what reaches it
                entry = self._input_layer_entry(prefix, t)
                if entry is not None and _dense(entry, [v]):
                    entry.calls.append([v])
        return [values.get(id(t)) for t in container_outputs]

    def _call_leaf(self, layer, children_prefix, node_key, arguments, invoke):
        """Call one node with no graph of its own, recording the runtime layers under it.
        `invoke(values)` calls it on a list of values, one per argument. Returns (outputs as
        (tensor, origin), dict keys if it returned a dict)."""
        if not self.symbolic and node_key not in self.needed:
            return None, None
        self.reads[node_key] = {origin[0] for _, origin in arguments if origin[0] is not None}
        if self.symbolic:
            self.calls[node_key] = NodeCall(layer, [origin for _, origin in arguments], self._replayer(invoke))
        values = [x for x, _ in arguments]
        with self._recording(layer, children_prefix, node_key) as ran:
            result = invoke(values)
        if self.symbolic and not ran and self._runtime_inside(children_prefix):
            self._trace(layer, children_prefix, node_key, values, invoke)
        outputs = [(self._produced(x, (node_key, j)), (node_key, j)) for j, x in enumerate(self._flatten(result))]
        if self.tile is not None and self._reads_wide(arguments):
            for x, _ in outputs:
                self._mark_wide(x)
        for x, origin in outputs:
            self.values[origin] = x
        names = sorted(result) if isinstance(result, dict) else None
        return outputs, names

    def _replayer(self, invoke):
        """invoke(values) as a function of (values, training), its outputs flat."""

        def replay(values, training=False):
            keep, self.training = self.training, training
            try:
                return self._flatten(invoke(values))
            finally:
                self.training = keep

        return replay

    def _runtime_inside(self, prefix):
        return [e for p, e in self.entries.items() if p.startswith(prefix) and e.reach == "runtime"]

    def _trace(self, layer, prefix, node_key, values, invoke):
        """Record the runtime layers under a node whose `call` Keras did not run on symbolic
        inputs (it states its output with compute_output_shape/compute_output_spec, as
        MultiHeadAttention does): call it once more inside a tf.function trace on tensors of
        the same shapes and dtypes; what the sub-layers return there gives their shapes."""
        import tensorflow as tf

        specs = [tf.TensorSpec(x.shape, x.dtype) for x in values]

        def traced(*placeholders):
            with self._recording(layer, prefix, node_key):
                invoke(list(placeholders))
            return tf.constant(0)

        inside = self._runtime_inside(prefix)
        recorded = [len(e.calls) for e in inside]
        try:
            tf.function(traced, autograph=False).get_concrete_function(*specs)
        except Exception:  # noqa: BLE001 - a `call` that cannot run on symbolic shapes (None batch)
            # Keras never needed it to: the sub-layers are listed without an output shape
            # (`dump` says so), as before this trace existed, and nothing half-recorded stays.
            for entry, count in zip(inside, recorded):
                del entry.calls[count:]

    @contextlib.contextmanager
    def _recording(self, layer, prefix, node_key):
        """While the node runs: its runtime layers' calls run as plain Python (tf.function
        unwrapped) and the chosen ones record their outputs under `node_key + (path, k)`.
        Yields a list that is not empty once the node's own `call` has run (Keras skips it on
        symbolic inputs when the layer states its output shape): the graphs it ran in."""
        inside = self._runtime_inside(prefix)
        if self.symbolic:
            chosen = {e.path for e in inside}
        else:
            n = len(node_key)
            chosen = {k[n] for k in self.needed if len(k) == n + 2 and k[:n] == node_key}
        ran = []
        if not inside and not _is_tf_function(type(layer).call):
            yield ran
            return
        patched = [(layer, None)] + [(e.layer, e.path if e.path in chosen else None) for e in inside]
        originals = []
        try:
            for target, path in patched:
                originals.append((target, target.__dict__.get("call")))
                target.call = self._recorder(target, path, node_key, ran, target is layer)
            recorded = [e.layer for e in inside if e.path in chosen]
            with contextlib.ExitStack() as stack:
                for attention in [t for t, _ in patched if _is_attention(t)]:  # at any depth
                    explicit = self.watch is not None or self._edited(attention._softmax, node_key)
                    stack.enter_context(_attention_scores_computed(attention, recorded, explicit))
                yield ran
        finally:
            for target, original in reversed(originals):
                if original is None:
                    del target.call
                else:
                    target.call = original

    def _edited(self, layer, node_key):
        """Whether an `edit` replaces an output of a runtime `layer` called inside `node_key`."""
        n = len(node_key)
        return any(len(key) == n + 2 and key[:n] == node_key and self.entries[key[n]].layer is layer
                   for key, _ in self.edit if key is not None)

    def _recorder(self, layer, path, node_key, ran, is_node=False):
        """`layer`'s call as plain Python; for the node itself, noting in `ran` the graph it
        runs in; for a chosen runtime layer at `path`, recording what each call returns."""
        import tensorflow as tf

        method = type(layer).call
        if _is_tf_function(method):  # its Python, converted by AutoGraph as tf.function would
            method = tf.autograph.to_graph(method.python_function)
        plain = functools.partial(method, layer)
        if is_node:
            def mark(*args, **kwargs):
                ran.append(tf.compat.v1.get_default_graph())
                return plain(*args, **kwargs)

            return mark
        if path is None:
            return plain
        entry = self.entries[path]
        count = [0]

        def record(*args, **kwargs):
            # A call traced in a function graph of its own inside the node's (the body of a
            # tf.while_loop: an RNN's cell, once per time step; a branch of a tf.cond) gives
            # values that exist only inside that loop or branch: no output of the extraction
            # function can hold them. Such a layer has no output, as one that never runs.
            if entry.no_output is not None or (ran and tf.compat.v1.get_default_graph() is not ran[-1]):
                if self.symbolic and entry.no_output is None:
                    parent = entry.parent  # the nearest layer around it that has an output
                    while parent is not None and self.entries[parent].no_output is not None:
                        parent = self.entries[parent].parent
                    where = f"'{parent}'" if parent is not None else "the model"
                    entry.no_output = (f"it runs inside a tf.while_loop or tf.cond of {where} (an RNN's "
                                       "cell runs once per time step), and no value inside one is an "
                                       f"output of the model's graph; dump {where} instead")
                    entry.calls.clear()
                return plain(*args, **kwargs)
            if not self.symbolic and count[0] >= _calls_under(entry, node_key):
                # the calls depend on a size the model leaves open (Keras' TimeDistributed loops
                # over a known time axis, and maps over an open one as if it were one call):
                # the k-th call here is not the k-th call traced, so no value can be named
                self.overrun.append((path, _calls_under(entry, node_key), entry.parent))
                return plain(*args, **kwargs)
            result = plain(*args, **kwargs)
            key = node_key + (path, count[0])
            count[0] += 1
            flat = self._flatten(result)
            outputs = [(self._produced(x, (key, j)), (key, j)) for j, x in enumerate(flat)]
            self.reads[key] = {node_key}
            for x, origin in outputs:
                self.values[origin] = x
            if any((key, j) in self.edit for j in range(len(flat))):  # the caller reads the edited values
                result = self._packed(result, [x for x, _ in outputs])
            if self.symbolic and _dense(entry, outputs):
                entry.calls.append(outputs)
                entry.output_names = sorted(result) if isinstance(result, dict) else None
            return result

        return record

    def _input_layer_entry(self, prefix, tensor):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None) or getattr(history, "layer", None)
        entry = self.entries.get(prefix + layer.name) if layer is not None else None
        return entry if entry is not None and entry.layer is layer else None

    def _packed(self, structure, flat):
        if _legacy(self.keras):
            import tensorflow as tf

            return tf.nest.pack_sequence_as(structure, flat)
        return self.keras.tree.pack_sequence_as(structure, flat)

    def _flatten(self, outputs):
        if _legacy(self.keras):
            import tensorflow as tf

            return tf.nest.flatten(outputs)
        return self.keras.tree.flatten(outputs)


def _dense(entry, outputs):
    """Whether no output of a call of `entry` is ragged. A tf.RaggedTensor (the StringLookup
    inside TextVectorization maps the tokens of each string) has no array of one shape to
    store, and padding it would invent values: the layer gets no output (`no_output` says
    why; --all and --match pass over it, --layer names the reason). A sparse value is stored
    dense (Graph._dense_value)."""
    if not any(_ragged(x) for x, _ in outputs):
        return True
    where = (f"dump '{entry.parent}', which makes it dense, instead" if entry.reach == "runtime"
             and entry.parent is not None else "dump the layer that makes it dense instead")
    entry.no_output = f"its value is a tf.RaggedTensor, which has no array of one shape to store; {where}"
    entry.calls.clear()
    return False


def _ragged(value):
    """Whether `value` is a tf.RaggedTensor, or a Keras 3 or tf_keras symbolic tensor standing
    for one."""
    import tensorflow as tf

    return isinstance(value, tf.RaggedTensor) or isinstance(getattr(value, "type_spec", None), tf.RaggedTensorSpec) \
        or getattr(value, "ragged", False) is True


def _calls_under(entry, node_key):
    """How many calls of a runtime layer the symbolic walk recorded inside the node `node_key`."""
    return sum(1 for outputs in entry.calls if outputs and outputs[0][1][0][:-2] == node_key)


def producer_name(tensor):
    """The name of the layer (or operation) that computes a symbolic tensor."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    return layer.name if layer is not None else getattr(tensor, "name", "output")


def _legacy(keras):
    return not keras.__version__.startswith("3")


def _is_tf_function(method):
    return hasattr(method, "python_function")


def _nodes_of(keras, layer):
    """(nodes, inputs, outputs) of a layer that holds a static graph of layers, else None;
    the nodes in call order (`_call_order`)."""
    if not isinstance(layer, keras.Model):
        return None
    if _legacy(keras):
        found = _tf_keras_nodes(layer)
    else:
        functional = getattr(layer, "_functional", None)  # a Keras 3 Sequential wraps one
        found = _keras3_nodes(functional if functional is not None else layer)
    if found is None:
        return None
    nodes, inputs, outputs = found
    return _call_order(nodes, inputs), inputs, outputs


def _call_order(nodes, inputs):
    """The nodes in the order the model calls them, which numbers a shared layer's calls
    (`call_0`, `call_1`) at every depth: each node as soon as the tensors it reads exist,
    and of two nodes ready at once, the one whose latest input was made first (then the
    next latest, and so on); the model's inputs are made in their order.

    Keras' `_nodes_by_depth` is a topological order too, but within one depth it follows
    Keras' search of the graph, not the inputs: it lists `enc(right)` before `enc(left)` for
    an encoder shared by two inputs, while the layers after it come left first."""
    rank = {id(t): i for i, t in enumerate(inputs)}
    producer = {id(t): n for n, (_, _, _, outputs) in enumerate(nodes) for t in outputs}
    waiting = []  # per node: the ids of its inputs that another node makes, still to come
    readers = {}  # tensor id -> the nodes that read it
    for n, (_, node_inputs, _, _) in enumerate(nodes):
        pending = {id(t) for t in node_inputs if id(t) in producer and producer[id(t)] != n}
        waiting.append(pending)
        for i in pending:
            readers.setdefault(i, []).append(n)

    def priority(n):  # tensors from neither a node nor the inputs (none in a connected graph) first
        made = sorted((rank.get(id(t), -1) for t in nodes[n][1]), reverse=True)
        return tuple(made), n

    ready = [priority(n) for n, pending in enumerate(waiting) if not pending]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(nodes[n])
        for t in nodes[n][3]:
            rank.setdefault(id(t), len(rank))
            for reader in readers.pop(id(t), ()):
                waiting[reader].discard(id(t))
                if not waiting[reader]:
                    heapq.heappush(ready, priority(reader))
    if len(order) != len(nodes):  # Keras builds no cycles: a node would be lost, never skipped quietly
        raise RuntimeError(f"{len(nodes) - len(order)} nodes of the model's graph are never computable")
    return order


def _graph_children(keras, model):
    """The nodes' operations of a model with a graph, in order: its `.layers`, and in a Keras 3
    functional model also the operations written inline (`x + y`, `keras.ops.relu(x)`,
    `x[:, :8]`), which Keras lists only in `.operations`."""
    if _legacy(keras) or getattr(model, "_functional", None) is not None:
        return list(model.layers)  # a Sequential holds layers only
    return list(getattr(model, "operations", model.layers))


@contextlib.contextmanager
def _attention_scores_computed(layer, recorded, explicit):
    """Keras internals: MultiHeadAttention computes its attention with one fused
    `ops.dot_product_attention` unless asked for the scores, and then its `softmax` sub-layer
    never runs. While `softmax` is among the `recorded` layers, `_compute_attention` (the
    method the layer's documentation offers for overriding) is also asked for the scores,
    which calls `softmax`: what it records is exactly what `return_attention_scores=True`
    gives.

    The layer's output stays the fused one, as Keras computes it (the explicit path differs
    where a query row is fully masked, and so does everything that reads such rows), except
    when asked for the `explicit` path (gradients are taken, or an edit replaces the scores):
    then the output is computed from the recorded scores, so that the gradient with respect
    to them is the real one and an edited score reaches the output.
    Not done with flash attention, which cannot return scores."""
    if not _is_attention(layer) or layer._softmax not in recorded or layer._flash_attention:
        yield
        return
    compute = layer._compute_attention

    def with_scores(*args, **kwargs):
        if len(args) > 5:  # (query, key, value, attention_mask, training, return_scores, ...)
            scored = (*args[:5], True, *args[6:]), kwargs
        else:
            scored = args, {**kwargs, "return_attention_scores": True}
        if explicit:
            return compute(*scored[0], **scored[1])
        result = compute(*args, **kwargs)
        if result[1] is None:  # fused: compute the scores too, for `softmax` to record
            compute(*scored[0], **scored[1])
        return result

    layer._compute_attention = with_scores
    try:
        yield
    finally:
        del layer._compute_attention


def _is_attention(layer):
    from keras.layers import MultiHeadAttention  # Keras 3's; tf_keras' always runs softmax

    return isinstance(layer, MultiHeadAttention)


def _sublayers(layer):
    """Keras internals: the layers a custom layer tracks as attributes (Keras 3 and tf_keras)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _keras3_nodes(model):
    """Keras 3 internals: Function._nodes_by_depth and keras.src.ops.node.Node."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth is None:
        return None  # a subclassed model: no static graph of layers
    import keras

    nodes = []
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue

            def call(tensors, training, node=node, layer=isinstance(node.operation, keras.layers.Layer)):
                args, kwargs = node.arguments.fill_in(tensors)
                if layer:  # an inline operation (`x + y`) takes no `training`
                    kwargs = {**kwargs, "training": training}
                return node.operation(*args, **kwargs)

            nodes.append((node.operation, list(node.input_tensors), call, list(node.outputs)))
    return nodes, list(model.inputs), list(model.outputs)


def _tf_keras_nodes(model):
    """tf_keras internals: Functional._nodes_by_depth and tf_keras.src.engine.node.Node."""
    import tensorflow as tf

    if not getattr(model, "_is_graph_network", False):
        return None
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            node_inputs = list(node.keras_inputs)

            def call(tensors, training, node=node, node_inputs=node_inputs):
                # map_arguments pops one value per use of each input, keyed by str(id())
                ids = [str(id(t)) for t in node_inputs]
                feed = {i: [tensors[id(t)]] * ids.count(i) for i, t in zip(ids, node_inputs)}
                args, kwargs = node.map_arguments(feed)
                return node.layer(*args, **{**kwargs, "training": training})

            nodes.append((node.layer, node_inputs, call, tf.nest.flatten(node.outputs)))
    return nodes, list(model.inputs), list(model.outputs)
