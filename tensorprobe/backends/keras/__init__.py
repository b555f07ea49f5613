"""Keras models: `.keras` zip archives and HDF5 `.h5` files, loaded with Keras 3, or with
tf_keras for the Keras 2 files Keras 3 cannot rebuild (loader.py: config.py checks what
loading would run first; custom.py imports --custom-objects); the walk over their layers
(graph.py), the compiled extraction (runner.py), the layer records (describe.py); the
Backend (backend.py). Nothing here imports TensorFlow until a model is opened."""

from tensorprobe.backends.keras import config

DESCRIPTION = "a .keras zip archive, an HDF5 .h5 file"


def guess_can_open(path, head):
    """'keras' (a Keras 3 zip archive: one that lists a config.json) or 'h5' (HDF5) from the
    contents; None otherwise."""
    if head is None:
        return None
    if head.startswith(config.ZIP_SIGNATURE):
        return "keras" if config.is_keras_archive(path) else None
    if head[:8] == config.HDF5_SIGNATURE:
        return "h5"
    return None


def open(path, fmt, options):
    from tensorprobe.backends.keras import loader

    options.refuse(path)
    return loader.load_model(path, fmt, unsafe=options.unsafe, custom_objects=options.custom_objects)


def open_object(obj):
    """A KerasBackend for an in-memory keras.Model (Keras 3 or tf_keras); None otherwise."""
    from tensorprobe.backends.keras.backend import from_memory

    return from_memory(obj)
