"""Model loaders: a path in, a LoadedModel out.

`formats` reads what a file is and what its stored config says without TensorFlow;
`keras` loads Keras 3 and Keras 2 (tf_keras) files; `savedmodel` loads SavedModel folders;
`frozen` loads TensorFlow 1 frozen graphs (.pb, .pbtxt); `tflite` loads TFLite flatbuffers.
"""

from tensorprobe.models import formats, frozen, savedmodel, tflite
from tensorprobe.models import keras as keras_files
from tensorprobe.models.keras import LoadedModel


def load_model(path, signature=None, keras_model=True, raw_quantized=False, **options):
    """Load a model file or SavedModel folder. `signature` chooses a SavedModel's signature
    (a usage error for a Keras file or frozen graph); `keras_model=False` skips rebuilding a
    Keras 2 SavedModel with tf_keras when only its graph is needed; `raw_quantized` makes a
    TFLite file's quantized tensors come out as their integers (a usage error for other
    formats). `options` go to the Keras loader."""
    loaded = _load(path, signature, keras_model, raw_quantized, options)
    loaded.unsafe = bool(options.get("unsafe", False))  # what runs is checked before it runs
    return loaded


def _load(path, signature, keras_model, raw_quantized, options):
    from tensorprobe.errors import UsageError

    fmt = formats.detect_format(path)
    if fmt == "tflite":  # no Python code in a TFLite file: `unsafe` and custom objects do not apply
        return tflite.load_tflite(path, signature, raw_quantized)
    if raw_quantized:
        raise UsageError(f"--raw-quantized: {path} is not a TFLite file; only TFLite files hold quantized tensors")
    if fmt == "savedmodel":
        return savedmodel.load_savedmodel(path, signature, options.get("unsafe", False), keras_model)
    if signature is not None:
        raise UsageError(f"--signature '{signature}': {path} is a model file; signatures belong to "
                         "SavedModel folders and TFLite files")
    if fmt in frozen.FORMATS:
        return frozen.load_frozen_graph(path, fmt, options.get("unsafe", False))
    return keras_files.load_model(path, **options)


__all__ = ["LoadedModel", "load_model"]
