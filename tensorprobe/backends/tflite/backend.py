"""A TFLite file as a backend: its main subgraph's tensors (graph.py), the Keras layers found
again in their names (layers.py), run by TensorFlow's TFLite interpreter (runner.py), quantized
tensors dequantized to float32 unless `raw_quantized` (quantization.py)."""

import hashlib

from tensorprobe.backends import base
from tensorprobe.errors import ModelLoadError
from tensorprobe.text import first_line


class TFLiteBackend(base.Backend):
    """`signature`: the main subgraph's signature key ("serving_default"), or "main subgraph"
    for a file with none. `raw_quantized`: dumps keep the integers of quantized tensors."""

    def __init__(self, path, loader, sha256, graph, raw_quantized=False):
        super().__init__()
        self.path, self.loader, self.format, self.sha256 = path, loader, "tflite", sha256
        self._tensor_graph = graph
        self.signature = graph.signature or "main subgraph"
        self.raw_quantized = raw_quantized

    def _build_layer_graph(self):
        from tensorprobe.backends.tflite.layers import find_layers

        return find_layers(self.tensor_graph)

    def describe(self):
        from tensorprobe.backends.tfgraph import scopes

        return scopes.describe(self.layer_graph)

    def title_parts(self):
        return [f"signature {self.signature}"]

    def fingerprint(self):
        return {"signature": self.signature, "raw_quantized": self.raw_quantized}

    def precision(self):
        """The file's quantized tensors (those with a scale) and float16 tensors, the narrowest."""
        found = set()
        for t in self.tensor_graph.tensors:
            found.add(t.quantization.dtype if t.quantization is not None else
                      t.dtype if t.dtype in base.HALF else None)
        return base.narrowest(found)

    def node_keys(self, plan, indices):
        """Model Explorer knows a TFLite node by its tensor's name (origins are indices)."""
        by_index = self.tensor_graph.by_index
        return [by_index[plan.origins[j]].name if not isinstance(plan.origins[j], str) else plan.origins[j]
                for j in indices]


def load_tflite(path, signature=None, raw_quantized=False):
    """Load the TFLite file `path` into an interpreter and read its graph. `signature` must be
    the signature of its main subgraph (the one tensorprobe runs), if given."""
    import tensorflow as tf

    from tensorprobe.backends.tflite.graph import open_interpreter, read_graph, stored_tensors

    path = str(path)
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({first_line(e)})") from e
    interpreter = open_interpreter(path, content)
    graph = read_graph(interpreter, path, signature, raw_quantized, stored_tensors(content))
    return TFLiteBackend(path, f"tf.lite {tf.__version__}", hashlib.sha256(content).hexdigest(), graph,
                         raw_quantized)
