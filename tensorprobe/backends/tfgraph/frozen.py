"""TensorFlow 1 frozen graphs: a GraphDef whose variables were turned into constants
(`tf.compat.v1.graph_util.convert_variables_to_constants`, the `freeze_graph` tool, the
object-detection zoo's `frozen_inference_graph.pb`), in a binary `.pb` or a text `.pbtxt`.

Such a graph is all there is: no signature, no Keras model. Its inputs are its `Placeholder`
ops; `tensorprobe.backends.tfgraph.tensors.from_graph_def` makes it a TensorGraph (listing, pruned runner) and
`tensorprobe.backends.tfgraph.scopes` finds its layers in its name scopes (TensorFlow 1 naming). A graph that
still holds variables needs their values, which live in a checkpoint beside it: refused.
A graph holding ops that act outside the computation (`backends.tfgraph.effects`: files,
Python callbacks, printing, the network) is listed but refused to run, unless --unsafe.

A GraphDef carries no length and no end marker: a file cut exactly between two ops parses as
a smaller graph. What can be checked is: every input names an op of the graph, every function
called is in its library (which TensorFlow writes after the ops, so a cut loses it).
"""

from pathlib import Path

from tensorprobe.backends import base
from tensorprobe.errors import ModelLoadError
from tensorprobe.text import first_line

# The ops that hold a variable (reference or resource); frozen graphs have Const ops instead.
VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "TemporaryVariable", "AutoReloadVariable"})


def load_frozen_graph(path, fmt, unsafe=False):
    """Parse the GraphDef in `path` ('frozen_graph': binary, 'frozen_graph_text': text format);
    unless `unsafe`, note the ops in it that act outside the computation (refused to run)."""
    from google.protobuf import message, text_format
    from tensorflow.core.framework import graph_pb2

    path = str(path)
    graph_def = graph_pb2.GraphDef()
    try:
        if fmt == "frozen_graph_text":
            text_format.Parse(Path(path).read_text(encoding="utf-8"), graph_def)
        else:
            graph_def.ParseFromString(Path(path).read_bytes())
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: damaged or incomplete frozen graph ({first_line(e)})") from e
    if not graph_def.node:
        raise ModelLoadError(f"{path}: the GraphDef holds no ops")
    variables = [node.name for node in graph_def.node if node.op in VARIABLE_OPS]
    if variables:
        listed = ", ".join(f"'{name}'" for name in variables[:3]) + (", ..." if len(variables) > 3 else "")
        raise ModelLoadError(
            f"{path}: the graph holds {len(variables)} variable{'s' if len(variables) > 1 else ''} "
            f"({listed}), so it is not frozen and their values are elsewhere; freeze it first "
            "(tf.compat.v1.graph_util.convert_variables_to_constants, or the freeze_graph tool)"
        )
    _check_complete(path, graph_def)
    import tensorflow as tf

    from tensorprobe.backends.tfgraph import effects, scopes
    from tensorprobe.backends.tfgraph.backend import GraphBackend

    return GraphBackend(path, f"tensorflow {tf.__version__}", fmt, base.file_sha256(path), scopes.TF1,
                        graph_def=graph_def, effects=[] if unsafe else effects.find(graph_def))


def _check_complete(path, graph_def):
    """Refuse a GraphDef whose ops read ops it does not hold, or call functions its library
    does not hold (a file cut short between two ops, a library lost): ModelLoadError."""
    from tensorprobe.backends.tfgraph.effects import called_functions, node_of

    functions = {f.signature.name: f for f in graph_def.library.function}
    damaged = "the file is incomplete or damaged"

    def check(nodes, known, where):
        for node in nodes:
            for name in node.input:
                if node_of(name) not in known:
                    raise ModelLoadError(f"{path}: node '{node.name}'{where} reads '{node_of(name)}', "
                                         f"which the graph does not hold: {damaged}")
            for called in called_functions(node)[1:]:  # function-valued attributes
                if called not in functions:
                    raise ModelLoadError(f"{path}: node '{node.name}'{where} calls function '{called}', "
                                         f"which the graph's library does not hold: {damaged}")

    check(graph_def.node, {node.name for node in graph_def.node}, "")
    for name, function in functions.items():
        args = {arg.name for arg in function.signature.input_arg}
        check(function.node_def, args | {node.name for node in function.node_def}, f" of function '{name}'")
