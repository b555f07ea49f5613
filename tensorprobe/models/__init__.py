"""Model loaders: a path in, a LoadedModel out.

`formats` reads what a file is and what its stored config says without TensorFlow;
`keras` loads Keras 3 and Keras 2 (tf_keras) files; `savedmodel` loads SavedModel folders;
`frozen` loads TensorFlow 1 frozen graphs (.pb, .pbtxt).
"""

from tensorprobe.models import formats, frozen, savedmodel
from tensorprobe.models import keras as keras_files
from tensorprobe.models.keras import LoadedModel


def load_model(path, signature=None, keras_model=True, **options):
    """Load a model file or SavedModel folder. `signature` chooses a SavedModel's signature
    (a usage error for a model file); `keras_model=False` skips rebuilding a Keras 2
    SavedModel with tf_keras when only its graph is needed. `options` go to the Keras loader."""
    fmt = formats.detect_format(path)
    if fmt == "savedmodel":
        return savedmodel.load_savedmodel(path, signature, options.get("unsafe", False), keras_model)
    if signature is not None:
        from tensorprobe.errors import UsageError

        raise UsageError(f"--signature '{signature}': {path} is a model file; signatures belong to SavedModel folders")
    if fmt in frozen.FORMATS:
        return frozen.load_frozen_graph(path, fmt)
    return keras_files.load_model(path, **options)


__all__ = ["LoadedModel", "load_model"]
