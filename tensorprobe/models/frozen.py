"""TensorFlow 1 frozen graphs: a GraphDef whose variables were turned into constants
(`tf.compat.v1.graph_util.convert_variables_to_constants`, the `freeze_graph` tool, the
object-detection zoo's `frozen_inference_graph.pb`), in a binary `.pb` or a text `.pbtxt`.

Such a graph is all there is: no signature, no Keras model. Its inputs are its `Placeholder`
ops; `tensorprobe.backends.tfgraph.tensors.from_graph_def` makes it a TensorGraph (listing, pruned runner) and
`tensorprobe.backends.tfgraph.scopes` finds its layers in its name scopes (TensorFlow 1 naming). A graph that
still holds variables needs their values, which live in a checkpoint beside it: refused.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorprobe.errors import ModelLoadError
from tensorprobe.models import formats
from tensorprobe.models.keras import LoadedModel
from tensorprobe.text import first_line

# The ops that hold a variable (reference or resource); frozen graphs have Const ops instead.
VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "TemporaryVariable", "AutoReloadVariable"})
FORMATS = ("frozen_graph", "frozen_graph_text")


@dataclass
class LoadedFrozenGraph(LoadedModel):
    """A LoadedModel for a frozen GraphDef file: `model` and `keras` are None."""

    graph_def: Any = None  # tf.compat.v1.GraphDef

    def tensor_graph(self):
        from tensorprobe.backends.tfgraph.tensors import from_graph_def

        return from_graph_def(self.graph_def, self.source, self.path)

    @property
    def source(self):
        """What the graph is, as `tensorprobe tensors` titles it."""
        return "frozen graph (GraphDef, text format)" if self.format == "frozen_graph_text" else \
            "frozen graph (GraphDef)"


def load_frozen_graph(path, fmt):
    """Parse the GraphDef in `path` ('frozen_graph': binary, 'frozen_graph_text': text format)."""
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
    import tensorflow as tf

    return LoadedFrozenGraph(path, None, None, f"tensorflow {tf.__version__}", fmt, formats.sha256_of(path),
                             graph_def=graph_def)
