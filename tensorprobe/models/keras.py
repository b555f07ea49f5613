"""Load Keras 3 files with Keras 3, and Keras 2 `.h5` files that Keras 3 cannot rebuild with tf_keras."""

import re
from dataclasses import dataclass
from typing import Any

from tensorprobe.errors import ModelLoadError
from tensorprobe.models import formats
from tensorprobe.text import first_line


@dataclass
class LoadedModel:
    path: str  # as the user gave it
    model: Any  # a keras.Model or tf_keras.Model
    keras: Any  # the module that built it: keras or tf_keras
    loader: str  # "keras 3.x.y" or "tf_keras 2.x.y"
    format: str  # "keras" or "h5"
    sha256: str


def load_model(path, unsafe=False, custom_objects=None):
    """Load a Keras model file. Stored Python code (Lambda layers) is refused unless `unsafe`.

    `custom_objects` ({name: class or function}) are the user's classes the file refers to.
    """
    custom_objects = custom_objects or {}
    path = str(path)
    fmt = formats.detect_format(path)
    if fmt not in ("keras", "h5"):
        raise ModelLoadError(f"{path}: not a Keras model file (.keras, .h5); tensorprobe.models.load_model reads it")
    config, written_by = formats.read_config(path, fmt)
    if not unsafe:
        # tf_keras' .h5 loader has no safe mode, so the check is ours, for every format alike.
        formats.refuse_code(path, config)
    sha = formats.sha256_of(path)

    import keras

    from tensorprobe.backends.keras.graph import generated_names

    try:
        with generated_names(keras):
            model = keras.saving.load_model(
                path, custom_objects=custom_objects, compile=False, safe_mode=not unsafe
            )
        return LoadedModel(path, model, keras, f"keras {keras.__version__}", fmt, sha)
    except Exception as e:  # any failure to rebuild the file is the file's problem, reported below
        keras3_error = e
    if fmt == "h5" and not written_by.startswith("3"):
        import tf_keras

        try:
            with generated_names(tf_keras):
                model = tf_keras.models.load_model(path, custom_objects=custom_objects, compile=False)
        except Exception as e:
            raise _load_error(path, "cannot load this Keras 2 model", e) from e
        return LoadedModel(path, model, tf_keras, f"tf_keras {tf_keras.__version__}", fmt, sha)
    raise _load_error(path, "cannot load the model", keras3_error) from keras3_error


def _load_error(path, what, exc):
    """A ModelLoadError; a missing custom class is named, with the option that supplies it."""
    text = str(exc)
    package = re.search(r"deserialize class '([\w.]+)' because its parent module ([\w.]+) cannot be imported", text)
    if package:  # a class from a library (keras_hub.src.models...): the library is missing
        top = package.group(2).split(".")[0]
        return ModelLoadError(
            f"{path}: the model uses the class '{package.group(1)}' from the module "
            f"{package.group(2)}, which cannot be imported: install it "
            f"(pip install {top.replace('_', '-')}), or pass --custom-objects FILE.py with the class"
        )
    missing = re.search(r"(?:Could not locate|Unknown) (?:class|layer|function|object)[^'`]*['`]([\w.>]+)['`]", text)
    if missing:
        return ModelLoadError(
            f"{path}: the model needs the custom class or function '{missing.group(1)}'; "
            "pass --custom-objects FILE.py with its definition"
        )
    return ModelLoadError(f"{path}: {what}: {first_line(exc)}")
