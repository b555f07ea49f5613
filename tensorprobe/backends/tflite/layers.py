"""Keras layers found again in a TFLite file's tensor names.

The converter names each tensor after the TensorFlow ops it stands for, their names joined by
';' when it fused several ops into one (`transfer_1/vgg16_1/block1_conv2_1/Relu;transfer_1/
vgg16_1/block1_conv2_1/convolution`: a CONV_2D with its ReLU). Those are the op names of the
SavedModel the file was converted from, so the name scopes in them are the same, and
`tensorprobe.backends.tfgraph.scopes`' rule finds the same layers with the same paths (`vgg16/block1_conv2`):

1. Every ';'-part of every tensor name that has a scope is placed in the tree of scopes
   (`scopes.scope_tree`); a scope holds layers by `scopes.layer_scopes` (Keras 3's `_N`
   suffixes). Files converted from tf.keras 2.x name scopes after the layers as they are
   (`model/conv2d/Relu`), which shows as a layer scope without `_N`; there, with no object
   graph to say which scopes are layers, a model's sub-scopes are its layers, and a layer's
   sub-scopes are layers too when there are two or more (a nested model), not when there is
   one (`bn/batchnorm/...`, a layer's own ops).
2. Each tensor computed from the inputs belongs to one layer, its *owner*: the layer of its
   name's parts when they all lie in one; when a fused op's name spans several layers
   (`Conv1_relu/Relu6;Conv1/convolution`, `block_1_depthwise_relu/Relu6;block_1_depthwise_BN/
   batchnorm/mul_1;block_1_depthwise/depthwise;;block_1_pad/Pad`), the last of them in the
   Keras graph, which is the one whose part is an activation (Relu, Relu6, Sigmoid, ...), else
   one that is neither a linear op (convolution, MatMul, depthwise, BiasAdd) nor a padding,
   else a linear op's (the order of the parts in the name is not the graph's order). The other
   layers of that name have *fused* into the owner's op: listed as such, with no tensor.
   A tensor whose name has no scope at all (the model's outputs are renamed after the
   signature: `StatefulPartitionedCall_1:0`) belongs to the layer its op's constants are
   named after (the converter names them after their op: a FULLY_CONNECTED that reads
   `logits_1/MatMul1` is the Dense `logits`' op, not the layer before it that feeds it); for
   an op with no such constant, to the layer of the tensors it reads, when they all belong to
   one (a Dense layer's softmax output).
3. A layer's outputs are the tensors it (or a layer inside it) owns that an op outside it
   reads, or that the model returns (scopes' rule 4). Two scopes with one path are two calls.
4. Params are the elements of the weight tensors (float or quantized constants) its ops read,
   counted for the layer their own name places them in, else for the owner of the op.

A layer that leaves no name at all is not found: a Dropout does nothing at inference, and a
BatchNormalization with no shift (beta and moving mean 0: an untrained one) after a Conv2D
without bias is folded into the Conv2D's weights with no bias left to carry its name, so the
Conv2D's tensor holds the BatchNormalization's output (measured on MobileNetV2 with
weights=None: 35 of its 52 BatchNormalizations; with any shift, a bias stays, named after the
BatchNormalization too, and all 155 layers are found). `layers` says so in its footer.
"""

import re
from dataclasses import dataclass

from tensorprobe.backends.tfgraph import scopes
from tensorprobe.backends.tflite.graph import CONST_OP, INPUT_OP

ACTIVATION = re.compile(
    r"(Relu6?|Relu1|Elu|Selu|Sigmoid|Tanh|Softmax|LogSoftmax|LeakyRelu|Softplus|Softsign|Gelu|gelu|Erf|"
    r"clip_by_value|HardSwish|hard_swish|hard_sigmoid|HardSigmoid|Swish|swish|Silu|silu)\d*"
)
LINEAR = re.compile(
    r"(convolution|Conv1D|Conv2D|Conv3D|conv1d|MatMul|BatchMatMul(V\d)?|BiasAdd|depthwise|DepthwiseConv2dNative|"
    r"conv_transpose|conv2d_transpose|Conv2DBackpropInput|Einsum|einsum|Tensordot)\d*"
)
PAD = re.compile(r"(Pad|PadV2|MirrorPad)\d*")
WEIGHT_DTYPES = ("float16", "float32", "float64")
NOTE = ("layers that leave no name in a TFLite file are not listed: a Dropout (nothing at inference), a "
        "BatchNormalization without shift (beta and moving mean 0, as untrained) after a Conv2D without bias, folded "
        "into its weights (that Conv2D's tensor holds the BatchNormalization's output)")


@dataclass(eq=False)
class _Mention:
    """One ';'-part of a tensor's name: a TensorFlow op name."""

    name: str
    tensor: object  # TFLiteTensor
    part: int  # its place in the name

    @property
    def rank(self):
        """Where the op comes in a fused chain: padding, linear op, other, activation."""
        op = self.name.rsplit("/", 1)[-1]
        if ACTIVATION.fullmatch(op):
            return 3
        if LINEAR.fullmatch(op):
            return 1
        if PAD.fullmatch(op):
            return 0
        return 2


@dataclass(eq=False)
class _Node:
    """A layer scope: one call of the layer at `path`."""

    scope: object  # scopes._Scope
    path: str
    parent: object  # _Node or None
    depth: int
    key: tuple = ()  # where it comes among its siblings

    def ancestors(self):
        node = self
        while node is not None:
            yield node
            node = node.parent


class TFLiteLayers(scopes.ScopeGraph):
    """The layers of a TFLite file; `layer_of_op` maps tensor indices to their owner's path."""

    def layer_of(self, tensor_name):
        info = self.tensor_graph.by_name.get(tensor_name)
        return self.layer_of_op.get(info.index, "") if info is not None else ""


def find_layers(graph):
    """The TFLiteLayers of a TFLiteGraph, by the rule above."""
    mentions = {t.index: [_Mention(part, t, k) for k, part in enumerate(t.name.split(";")) if "/" in part]
                for t in graph.tensors}
    root = scopes.scope_tree((m.name, True, m) for ms in mentions.values() for m in ms)
    naming = _naming(root)
    models = [c for c in root.children.values() if scopes.layer_scopes(c, naming)]
    if len(models) == 1:
        top, model_name = scopes.layer_scopes(models[0], naming), naming.layer_name(models[0].name)
    else:
        top, model_name = models, ""
    readers = {}
    for op in graph.ops:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    nodes, places = [], _places(graph, readers)
    _walk(top, naming, "", None, 0, nodes, places)
    node_of = {}  # mention -> innermost layer node
    for node in nodes:  # parents before children: the innermost comes last
        for m in node.scope.all_ops:
            node_of[m] = node

    owner, inherited = _owners(graph, mentions, node_of, places, readers)
    inside = {node: set() for node in nodes}
    for index, node in owner.items():
        for n in node.ancestors():
            inside[n].add(index)
    returned = set(graph.output_indices)

    entries, order = {}, {}
    for node in sorted(nodes, key=lambda n: (n.depth, n.key)):
        parent = node.parent.path if node.parent is not None else None
        if node.path not in entries:
            siblings = order.setdefault(parent, [])
            index = f"{entries[parent].index}.{len(siblings)}" if parent is not None else str(len(siblings))
            siblings.append(node.path)
            entries[node.path] = scopes.ScopeLayer(node.path, index, node.depth, None, parent, "graph")
        entry = entries[node.path]
        outputs = _outputs(graph, inside[node], readers, returned)
        if outputs:
            entry.calls.append([(graph.by_index[i], i) for i in outputs])
            if not entry.op_type:
                entry.op_type = _op_type(graph, outputs[0])
    for node in nodes:
        entry = entries[node.path]
        if not entry.calls and entry.reach != "fused":
            entry.reach = "fused"
            entry.fused_into, entry.op_type = _fused_into(graph, node, owner, readers)
    entries = _parents_first(entries, order)
    for path, entry in entries.items():
        if entry.parent is not None:
            entries[entry.parent].children.append(path)

    params = _params(graph, nodes, mentions, node_of, owner, readers)
    for node in {n.path: n for n in nodes}.values():
        entries[node.path].params = sum(size for paths, size in params if node.path in paths)
    total = sum(size for _, size in params)
    layer_of = {index: node.path for index, node in owner.items()}
    notes = [f"note:    {NOTE}"] if entries else []
    given = {}
    for index, why in inherited.items():
        given.setdefault((owner[index].path, why), []).append(graph.by_index[index])
    for (path, why), tensors in given.items():
        listed = ", ".join(f"{t.name or f'#{t.index}'} ({t.op})" for t in tensors)
        notes.append(f"note:    {listed}: no scope in the name, given to {path}, {why} "
                     "(had a separate Activation layer made it, that layer left no name)")
    return TFLiteLayers(graph, model_name, entries, layer_of, total, notes)


def _walk(scopes_here, naming, prefix, parent, depth, nodes, places):
    """The layer nodes under `scopes_here`, parents first; each node's key puts it in graph
    order among its siblings: where its first mention is computed (`places`), and within a
    fused op, padding, linear op, other, activation (the order of the parts says nothing)."""
    for scope in scopes_here:
        node = _Node(scope, prefix + naming.layer_name(scope.name), parent, depth)
        node.key = min((places[m.tensor.index], m.rank, -m.part) for m in scope.all_ops)
        nodes.append(node)
        _walk(scopes.layer_scopes(scope, naming), naming, node.path + "/", node, depth + 1, nodes, places)


def _places(graph, readers):
    """Tensor index -> where it comes into the computation: a computed tensor's position; a
    weight's, that of the first output of the first op that reads it."""
    places = {}
    for t in graph.tensors:
        outputs = [graph.by_index[op.outputs[0]].position for op in readers.get(t.index, ()) if op.outputs]
        places[t.index] = t.position if t.index in graph.fed or not outputs else min(outputs)
    return places


def _naming(root):
    """Keras 3's naming when every layer scope of the top-level scopes ends in `_N`; else
    tf.keras 2.x's (see rule 1)."""
    top = [c for c in root.children.values() if _candidates(c)]
    if all(scopes.SUFFIXED.fullmatch(c.name) for scope in top for c in [scope, *_candidates(scope)]):
        return scopes.KERAS3
    layers, models = set(), set()

    def visit(scope, is_model):
        found = _candidates(scope)
        if is_model or len(found) >= 2:
            models.add(scope.name)
            layers.update(c.name for c in found)
            for c in found:
                visit(c, False)

    for scope in top:
        visit(scope, True)
    return scopes.Naming(True, frozenset(layers), frozenset(models))


def _candidates(scope):
    """Sub-scopes that could be layers: not an op's own scope (`Mean/reduction_indices`)."""
    own = {m.name.rsplit("/", 1)[-1] for m in scope.ops}
    return [c for c in scope.children.values() if c.name not in own and c.computed]


def _owners(graph, mentions, node_of, places, readers):
    """(tensor index -> the layer node that owns it (rule 2), for the tensors computed from
    the inputs; {index: why} of those whose name has no scope, owned by the layer of the
    op's own constants or of the tensors it reads)."""
    owner, first, inherited = {}, {}, {}
    for t in graph.tensors:
        for m in mentions[t.index]:
            node = node_of.get(m)
            if node is not None:
                first[node] = min(first.get(node, places[t.index]), places[t.index])
    producer = {i: op for op in graph.ops for i in op.outputs}
    unscoped = []
    for t in graph.tensors:
        if t.index not in graph.fed or t.op == INPUT_OP:
            continue
        ranks = {}
        for m in mentions[t.index]:
            node = node_of.get(m)
            if node is not None:
                ranks[node] = max(ranks.get(node, (-1, 0)), (m.rank, -m.part))
        if ranks:
            owner[t.index] = max(ranks, key=lambda n: (ranks[n][0], first[n], ranks[n][1]))
        elif "/" not in t.name and t.index in producer:
            unscoped.append(t.index)
    for index in unscoped:  # in execution order: a chain of them passes its owner on
        op = producer[index]
        own = _constant_layers(graph, op, mentions, node_of, owner, readers)
        sources = {owner.get(i) for i in op.inputs if i in graph.fed}
        if len(own) == 1:
            owner[index], inherited[index] = own.pop(), "the layer the op's constants are named after"
        elif not own and len(sources) == 1 and None not in sources:
            owner[index], inherited[index] = sources.pop(), "the layer the op reads"
    return owner, inherited


def _constant_layers(graph, op, mentions, node_of, owner, readers):
    """The layers that the constants `op` reads are named after (a Dense's kernel, a Mean's
    reduction axes): the converter names an op's constants after that op, so they name its
    layer. A constant that other ops read too (the converter shares equal constants) counts
    only when those ops all belong to the layer it names (a layer called twice)."""
    found = set()
    for i in op.inputs:
        if i in graph.fed:
            continue
        for m in mentions[i]:
            node = node_of.get(m)
            others = [o for o in readers.get(i, ()) if o is not op]
            if node is not None and all(o.outputs and owner.get(o.outputs[0]) is node for o in others):
                found.add(node)
    return found


def _outputs(graph, inside, readers, returned):
    """The tensors of `inside` that an op outside reads or the model returns, in order."""
    found = []
    for index in inside:
        outside = any(op.outputs and op.outputs[0] not in inside for op in readers.get(index, ()))
        if outside or index in returned:
            found.append(index)
    return sorted(found, key=lambda i: graph.by_index[i].position)


def _op_type(graph, index):
    t = graph.by_index[index]
    return t.op if t.op not in (INPUT_OP, CONST_OP) else ""


def _fused_into(graph, node, owner, readers):
    """(path, op type) of the layer whose op took this layer in: the owner of the first
    computed tensor whose name names it, or of the op that reads a weight named after it."""
    named = sorted({m.tensor.index for m in node.scope.all_ops}, key=lambda i: graph.by_index[i].position)
    for index in named:
        if index in owner and owner[index] is not node:
            return owner[index].path, _op_type(graph, index)
    for index in named:
        for op in readers.get(index, ()):
            for out in op.outputs:
                if out in owner:
                    return owner[out].path, op.type
    return None, ""


def _params(graph, nodes, mentions, node_of, owner, readers):
    """[(paths of the layers it counts for, elements)] per weight tensor (rule 4)."""
    found = []
    for t in graph.tensors:
        if t.op != CONST_OP or (t.quantization is None and t.dtype not in WEIGHT_DTYPES):
            continue
        # a fused op's weights belong to its linear op's layer (else to the first in the chain)
        named = sorted(((m.rank != 1, m.rank, m.part), node_of[m]) for m in mentions[t.index] if m in node_of)
        node = named[0][1] if named else None
        if node is None:
            node = next((owner[op.outputs[0]] for op in readers.get(t.index, ())
                         if op.outputs and op.outputs[0] in owner), None)
        size = 1
        for d in t.shape or ():
            size *= d or 0
        found.append(({n.path for n in node.ancestors()} if node is not None else set(), size))
    return found


def _parents_first(entries, order):
    """The entries in tree order: each layer followed by its layers, siblings in graph order."""
    ordered = {}

    def visit(parent):
        for path in order.get(parent, ()):
            ordered[path] = entries[path]
            visit(path)

    visit(None)
    return ordered
