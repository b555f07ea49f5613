"""A model that is only a graph of tensors (a SavedModel signature, a TF 1 frozen GraphDef)
as a backend: its tensors (tensors.py), its layers found again in its name scopes
(scopes.py), run by pruning the frozen graph to the chosen tensors."""

from tensorprobe.backends import base

GRAPH_QUANTIZED = {"qint8": "int8", "quint8": "uint8", "qint16": "int16"}  # TensorFlow's quantized dtypes


class GraphBackend(base.Backend):
    """`signature` (a savedmodel.Signature) for a SavedModel folder, `graph_def` for a
    frozen graph file; `naming` says how its scopes name layers (scopes.Naming)."""

    def __init__(self, path, loader, format, sha256, naming, signature=None, graph_def=None, effects=()):
        super().__init__()
        self.path, self.loader, self.format, self.sha256 = path, loader, format, sha256
        self.naming, self.signature, self.graph_def, self.effects = naming, signature, graph_def, list(effects)
        self.signatures = []  # every signature name of a SavedModel, sorted
        self.saved_object = None  # the restored SavedModel: keeps the signature's variables alive

    @property
    def source(self):
        """What the graph is, as `tensorprobe tensors` and `layers` title it."""
        if self.signature is not None:
            return f"signature '{self.signature.name}'"
        return "frozen graph (GraphDef, text format)" if self.format == "frozen_graph_text" else \
            "frozen graph (GraphDef)"

    def _build_tensor_graph(self):
        from tensorprobe.backends.tfgraph import tensors

        if self.signature is not None:
            return tensors.from_signature(self.signature)
        return tensors.from_graph_def(self.graph_def, self.source, self.path, self.effects)

    def _build_layer_graph(self):
        from tensorprobe.backends.tfgraph import scopes

        return scopes.find_layers(self.tensor_graph, self.naming)

    def describe(self):
        from tensorprobe.backends.tfgraph import scopes

        return scopes.describe(self.layer_graph)

    def title_parts(self):
        return [f"signature {self.signature.name}" if self.signature is not None else self.source]

    def fingerprint(self):
        return {"signature": self.signature.name if self.signature is not None else None, "raw_quantized": False}

    def precision(self):
        """A graph's half-precision and quantized (qint8...) tensors, the narrowest."""
        found = set()
        for t in self.tensor_graph.tensors:
            found.add(GRAPH_QUANTIZED.get(t.dtype, t.dtype if t.dtype in base.HALF else None))
        return base.narrowest(found)
