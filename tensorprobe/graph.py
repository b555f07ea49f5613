"""Walk a model's layer graph, nested models included, as one graph from the outer inputs.

Keras cannot build `Model(outer.inputs, outer.get_layer("vgg16").get_layer("block1_conv2").output)`:
that output belongs to the nested model's own graph, which is not connected to the outer
inputs. So tensorprobe walks the graph itself: every node of the outer model is called
again, and a nested model (Functional or Sequential) is entered and its own nodes are called
on the tensors that reach it. The same layer objects are called, so the weights are the
model's own.

The walk runs twice. `unroll` walks on symbolic tensors: it records every call of every
layer at any depth (its output shapes, for `tensorprobe layers`) and which node each node
reads from. `Graph.evaluate` walks on real tensors inside a compiled function and calls only
the nodes that the requested outputs depend on, so a shallow layer costs a fraction of the
forward pass. (A flattened `keras.Model` over the re-traced tensors cannot be built in
general: Keras refuses two layers of the same name, and nested models often reuse names.)

Walking a functional graph needs Keras internals (`_nodes_by_depth` and the node objects):
they are kept to `_keras3_nodes` and `_tf_keras_nodes` below, and tests/test_graph.py fails
loudly if a Keras upgrade changes them.
"""

from dataclasses import dataclass, field

# A node key is the tuple of node positions from the outer model down to the node, so that a
# nested model called twice has distinct keys for its two calls. A value's origin is
# (node key, output position); the model's own inputs have the origin (None, input position).


@dataclass
class LayerEntry:
    """One layer of the model at any depth, and the outputs of each of its calls."""

    path: str  # "vgg16/block1_conv2"
    index: str  # position in `.layers` at each level: "1.3" is model.layers[1].layers[3]
    depth: int
    layer: object
    parent: str | None
    children: list = field(default_factory=list)  # paths of the layers it contains
    calls: list = field(default_factory=list)  # per call: list of (symbolic tensor, origin)

    @property
    def name(self):
        return self.layer.name

    @property
    def class_name(self):
        return type(self.layer).__name__


@dataclass
class Graph:
    model: object
    keras: object  # the module that built the model: keras (3) or tf_keras
    inputs: list  # the outer model's symbolic inputs
    outputs: list  # the origins of the model's outputs
    entries: dict  # path -> LayerEntry, in `.layers` order, parents before children
    reads: dict  # node key -> set of node keys whose outputs it reads
    symbolic: dict  # origin -> symbolic tensor

    def tensor(self, origin):
        """The symbolic tensor at `origin` (its shape and dtype)."""
        key, j = origin
        return self.inputs[j] if key is None else self.symbolic[origin]

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

    def evaluate(self, inputs, origins, needed, watch=None):
        """The values at `origins` for real input tensors, calling only the `needed` nodes.

        `watch(tensor)` is called on each value at `origins` as soon as it exists, before any
        layer reads it (a GradientTape's watch, for gradients with respect to activations).
        """
        walker = _Walker(self.keras, needed=needed, watch=watch, watched=set(origins))
        fed = [(x, (None, i)) for i, x in enumerate(inputs)]
        for x, origin in fed:
            walker.watch_if_wanted(x, origin)
        walker.run(self.model, fed, "", ())
        return [inputs[j] if key is None else walker.values[(key, j)] for key, j in origins]


def unroll(model, keras):
    """Walk `model` (built by the module `keras`: keras 3 or tf_keras) on symbolic tensors."""
    walker = _Walker(keras)
    walker.register(model, prefix="", index="", depth=0, parent=None)
    inputs = list(model.inputs)
    outputs = walker.run(model, [(x, (None, i)) for i, x in enumerate(inputs)], "", ())
    return Graph(model, keras, inputs, [o for _, o in outputs], walker.entries, walker.reads,
                 walker.values)


class _Walker:
    def __init__(self, keras, needed=None, watch=None, watched=()):
        self.keras = keras
        self.legacy = not keras.__version__.startswith("3")
        self.needed = needed  # node keys to call; None calls every node
        self.watch, self.watched = watch, watched
        self.entries = {}
        self.reads = {}
        self.values = {}  # origin -> tensor, for every node called

    def watch_if_wanted(self, tensor, origin):
        if self.watch is not None and origin in self.watched:
            self.watch(tensor)

    def register(self, container, prefix, index, depth, parent):
        for i, layer in enumerate(container.layers):
            path = prefix + layer.name
            self.entries[path] = LayerEntry(path, f"{index}{i}", depth, layer, parent)
            if parent is not None:
                self.entries[parent].children.append(path)
            if self._nodes_of(layer) is not None:
                self.register(layer, path + "/", f"{index}{i}.", depth + 1, path)

    def run(self, container, inputs, prefix, key):
        """Call `container`'s nodes on `inputs`, a flat list of (tensor, origin); return its
        flat outputs as (tensor, origin), None where an output was not needed."""
        nodes, container_inputs, container_outputs = self._nodes_of(container)
        values = {id(t): v for t, v in zip(container_inputs, inputs)}
        for position, (layer, node_inputs, call, node_outputs) in enumerate(nodes):
            if any(id(t) not in values for t in node_inputs):
                continue  # not needed, or not computable from these inputs (Keras skips it too)
            path = prefix + layer.name
            node_key = key + (position,)
            arguments = [values[id(t)] for t in node_inputs]
            if self._nodes_of(layer) is not None:
                outputs = self.run(layer, arguments, path + "/", node_key)
            else:
                if self.needed is not None and node_key not in self.needed:
                    continue
                self.reads[node_key] = {origin[0] for _, origin in arguments if origin[0] is not None}
                result = call({id(t): x for t, (x, _) in zip(node_inputs, arguments)})
                outputs = [(x, (node_key, j)) for j, x in enumerate(self._flatten(result))]
                for x, origin in outputs:
                    self.values[origin] = x
                    self.watch_if_wanted(x, origin)
            if path in self.entries and all(o is not None for o in outputs):
                self.entries[path].calls.append(outputs)
            for t, v in zip(node_outputs, outputs):
                if v is not None:
                    values[id(t)] = v
        for t, v in zip(container_inputs, inputs):  # an input layer's output is what reaches it
            entry = self._input_layer_entry(prefix, t)
            if entry is not None:
                entry.calls.append([v])
        return [values.get(id(t)) for t in container_outputs]

    def _input_layer_entry(self, prefix, tensor):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None) or getattr(history, "layer", None)
        entry = self.entries.get(prefix + layer.name) if layer is not None else None
        return entry if entry is not None and entry.layer is layer else None

    def _flatten(self, outputs):
        if self.legacy:
            import tensorflow as tf

            return tf.nest.flatten(outputs)
        return self.keras.tree.flatten(outputs)

    def _nodes_of(self, layer):
        """(nodes, inputs, outputs) of a layer that holds a graph of layers, else None."""
        if not isinstance(layer, self.keras.Model):
            return None
        if self.legacy:
            return _tf_keras_nodes(layer)
        functional = getattr(layer, "_functional", None)  # a Keras 3 Sequential wraps one
        return _keras3_nodes(functional if functional is not None else layer)


def _inference(kwargs):
    """Layers are called in inference mode, whatever `training=` the model was built with."""
    if "training" in kwargs:
        kwargs = {**kwargs, "training": False}
    return kwargs


def _keras3_nodes(model):
    """Keras 3 internals: Function._nodes_by_depth and keras.src.ops.node.Node."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth is None:
        return None  # a subclassed model: no static graph of layers
    nodes = []
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue

            def call(tensors, node=node):
                args, kwargs = node.arguments.fill_in(tensors)
                return node.operation(*args, **_inference(kwargs))

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

            def call(tensors, node=node, node_inputs=node_inputs):
                # map_arguments pops one value per use of each input, keyed by str(id())
                ids = [str(id(t)) for t in node_inputs]
                feed = {i: [tensors[id(t)]] * ids.count(i) for i, t in zip(ids, node_inputs)}
                args, kwargs = node.map_arguments(feed)
                return node.layer(*args, **_inference(kwargs))

            nodes.append((node.layer, node_inputs, call, tf.nest.flatten(node.outputs)))
    return nodes, list(model.inputs), list(model.outputs)
