"""Models that are only a graph of TensorFlow tensors: SavedModel folders (savedmodel.py; a
Keras 2 one is rebuilt as a Keras model by tf_keras when its layers are wanted) and
TensorFlow 1 frozen graphs, binary or text (frozen.py, recognised by protobuf.py). Their
tensors (tensors.py), the Keras layers found again in their name scopes (scopes.py), the ops
refused to run (effects.py); the Backend (backend.py)."""

from tensorprobe.backends.tfgraph import protobuf
from tensorprobe.errors import ModelLoadError

DESCRIPTION = "a SavedModel folder, a TensorFlow 1 frozen graph .pb or .pbtxt"
SAVED_MODEL = "saved_model.pb"


def guess_can_open(path, head):
    """'savedmodel' (a folder holding saved_model.pb), 'frozen_graph' or 'frozen_graph_text'
    (a GraphDef, binary or text) from the contents; None otherwise."""
    if head is None:
        return "savedmodel" if (path / SAVED_MODEL).is_file() else None
    kind = protobuf.protobuf_kind(head)
    if kind == "saved_model":
        raise ModelLoadError(f"{path}: is a SavedModel's saved_model.pb (a SavedModel proto), not a frozen "
                             f"graph; pass the folder that holds it: {path.parent}")
    return kind


def open(path, fmt, options):
    if fmt == "savedmodel":
        from tensorprobe.backends.tfgraph import savedmodel

        options.refuse(path, signature=True)
        return savedmodel.load_savedmodel(path, options.signature, options.unsafe, options.layers)
    from tensorprobe.backends.tfgraph import frozen

    options.refuse(path)
    return frozen.load_frozen_graph(path, fmt, options.unsafe)
