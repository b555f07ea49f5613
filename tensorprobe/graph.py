"""Unroll a model's layer graph, nested models included, into one graph from the outer inputs.

Keras cannot build `Model(outer.inputs, outer.get_layer("vgg16").get_layer("block1_conv2").output)`:
that output belongs to the nested model's own graph, which is not connected to the outer
inputs. So the graph is re-traced: every node of the outer model is called again on symbolic
tensors, and a nested model (Functional or Sequential) is entered and its own nodes are called
on the tensors that reach it. The same layer objects are called, so the weights are the
model's own; every call of every layer, at any depth, yields a symbolic tensor connected to the
outer inputs, from which a sub-model can be built that computes only what it needs.

Walking a functional graph needs Keras internals (`_nodes_by_depth` and the node objects):
they are kept to `_keras3_nodes` and `_tf_keras_nodes` below, and tests/test_graph.py fails
loudly if a Keras upgrade changes them.
"""

from dataclasses import dataclass, field


@dataclass
class LayerEntry:
    """One layer of the model at any depth, and the symbolic outputs of each of its calls."""

    path: str  # "vgg16/block1_conv2"
    index: str  # position in `.layers` at each level: "1.3" is model.layers[1].layers[3]
    depth: int
    layer: object
    parent: str | None
    children: list = field(default_factory=list)  # paths of the layers it contains
    calls: list = field(default_factory=list)  # one list of flat output tensors per call

    @property
    def name(self):
        return self.layer.name

    @property
    def class_name(self):
        return type(self.layer).__name__


@dataclass
class Graph:
    inputs: list  # the outer model's symbolic inputs
    outputs: list  # the outer model's outputs, re-traced
    entries: dict  # path -> LayerEntry, in `.layers` order, parents before children


def unroll(model, keras):
    """Re-trace `model` (built by the module `keras`: keras 3 or tf_keras) into a Graph."""
    walker = _Walker(keras)
    walker.register(model, prefix="", index="", depth=0, parent=None)
    inputs = list(model.inputs)
    outputs = walker.run(model, inputs, prefix="")
    return Graph(inputs, outputs, walker.entries)


class _Walker:
    def __init__(self, keras):
        self.keras = keras
        self.legacy = not keras.__version__.startswith("3")
        self.entries = {}

    def register(self, container, prefix, index, depth, parent):
        for i, layer in enumerate(container.layers):
            path = prefix + layer.name
            entry = LayerEntry(path, f"{index}{i}", depth, layer, parent)
            self.entries[path] = entry
            if parent is not None:
                self.entries[parent].children.append(path)
            if self._nodes_of(layer) is not None:
                self.register(layer, path + "/", f"{index}{i}.", depth + 1, path)

    def run(self, container, inputs, prefix):
        """Call `container`'s nodes on `inputs` (flat list); return its flat outputs."""
        nodes, container_inputs, container_outputs = self._nodes_of(container)
        tensors = {id(t): x for t, x in zip(container_inputs, inputs)}
        for node in nodes:
            layer, node_inputs, call, node_outputs = node
            if any(id(t) not in tensors for t in node_inputs):
                continue  # not computable from these inputs; Keras skips such nodes too
            path = prefix + layer.name
            if self._nodes_of(layer) is not None:
                outputs = self.run(layer, [tensors[id(t)] for t in node_inputs], path + "/")
            else:
                outputs = self._flatten(call(tensors))
            if path in self.entries:
                self.entries[path].calls.append(outputs)
            for t, x in zip(node_outputs, outputs):
                tensors[id(t)] = x
        for t, x in zip(container_inputs, inputs):  # an input layer's output is what reaches it
            for layer_entry in self._input_layer_entries(prefix, t):
                layer_entry.calls.append([x])
        return [tensors[id(t)] for t in container_outputs]

    def _input_layer_entries(self, prefix, tensor):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None) or getattr(history, "layer", None)
        if layer is None:
            return []
        entry = self.entries.get(prefix + layer.name)
        return [entry] if entry is not None and entry.layer is layer else []

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

            def call(tensors, node=node, node_inputs=node_inputs):
                # map_arguments pops one value per use of each input id
                ids = [str(id(t)) for t in node_inputs]
                feed = {i: [tensors[id(t)]] * ids.count(i) for i, t in zip(ids, node_inputs)}
                args, kwargs = node.map_arguments(feed)
                return node.layer(*args, **kwargs)

            nodes.append((node.layer, node_inputs, call, tf.nest.flatten(node.outputs)))
    return nodes, list(model.inputs), list(model.outputs)
