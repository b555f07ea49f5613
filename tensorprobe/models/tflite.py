"""TFLite files: a LoadedModel with no Keras model (`model` is None, as for a SavedModel that
holds only a graph), whose graph of tensors is the file's main subgraph, run by TensorFlow's
TFLite interpreter (tensorprobe.backends.tflite)."""

import hashlib
from dataclasses import dataclass, field
from typing import Any

from tensorprobe.errors import ModelLoadError
from tensorprobe.models.keras import LoadedModel
from tensorprobe.text import first_line


@dataclass
class TFLiteSignature:
    name: str  # the signature's key ("serving_default"), or "main subgraph" for a file with none


@dataclass
class LoadedTFLite(LoadedModel):
    """A LoadedModel for a .tflite file. `raw_quantized`: dumps keep the integers of quantized
    tensors instead of dequantizing them to float32."""

    signature: TFLiteSignature = None
    interpreter: Any = None
    raw_quantized: bool = False
    graph: Any = field(default=None, repr=False)

    def tensor_graph(self):
        """The file's TFLiteGraph (read once)."""
        return self.graph


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
    return LoadedTFLite(path, None, None, f"tf.lite {tf.__version__}", "tflite",
                        hashlib.sha256(content).hexdigest(), signature=TFLiteSignature(graph.signature or "main subgraph"),
                        interpreter=interpreter, raw_quantized=raw_quantized, graph=graph)
