"""Which backend opens a model: the registry of formats, and the one place that picks one.

Each entry of REGISTRY is a module (a package under `tensorprobe.backends`) that offers

    DESCRIPTION                     what its files are, for the message naming what tensorprobe reads
    guess_can_open(path, head)      the format name when `path` is one of its files (`head`: the
                                    file's first bytes, None for a folder), else None; recognised
                                    by content, never by the name alone
    open(path, format, options)     a base.Backend (options: OpenOptions)
    open_object(obj)                (optional) a base.Backend for an in-memory model it takes, else None

(xarray's BackendEntrypoint has the same shape.) Backends are asked in this order; importing
one imports no TensorFlow: `open` does.
"""

import importlib
from dataclasses import dataclass
from pathlib import Path

from tensorprobe import errors, limits
from tensorprobe.errors import ModelLoadError, UsageError

REGISTRY = [
    "tensorprobe.backends.keras",  # .keras zip archives and HDF5 .h5 files (Keras 3; Keras 2 through tf_keras)
    "tensorprobe.backends.tfgraph",  # SavedModel folders, TensorFlow 1 frozen graphs (.pb, .pbtxt)
    "tensorprobe.backends.tflite",  # TensorFlow Lite flatbuffers
    "tensorprobe.backends.onnx",  # ONNX ModelProto files (onnx + onnxruntime, the `onnx` extra)
]

HEAD = 1 << 16  # the bytes a backend's guess may look at
MODEL_FILE = "a model is a file or a SavedModel folder"


@dataclass
class OpenOptions:
    """What the user asked of the loader: `signature` (a SavedModel's or TFLite file's),
    `layers` (False: only the graph of tensors is wanted, so a Keras 2 SavedModel is not
    rebuilt), `raw_quantized` (TFLite integers as stored), `unsafe`, `custom_objects`
    ({name: class or function})."""

    signature: str | None = None
    layers: bool = True
    raw_quantized: bool = False
    unsafe: bool = False
    custom_objects: dict | None = None

    def refuse(self, path, signature=False, raw_quantized=False):
        """Refuse the options a format does not take: `signature`, `raw_quantized` True where
        it takes them."""
        if self.raw_quantized and not raw_quantized:
            raise UsageError(f"{errors.name('raw_quantized')}: {path} is not a TFLite file; only TFLite files hold "
                             "quantized tensors", argument="raw_quantized")
        if self.signature is not None and not signature:
            raise UsageError(f"{errors.name('signature')} '{self.signature}': {path} is a model file; signatures "
                             "belong to SavedModel folders and TFLite files", argument="signature")


def entries():
    return [importlib.import_module(name) for name in REGISTRY]


def not_a_model(path):
    described = [entry.DESCRIPTION for entry in entries()]
    listed = ", ".join(described[:-1]) + f", or {described[-1]}"
    return ModelLoadError(f"{path}: not a model file tensorprobe reads ({listed})")


def find_backend(path):
    """(backend package, format name) for the model at `path`, by its contents."""
    path = Path(path)
    head = None
    if not path.is_dir():
        with limits.open_regular(path, str(path), MODEL_FILE, UsageError) as f:
            head = f.read(HEAD)
    for entry in entries():
        fmt = entry.guess_can_open(path, head)
        if fmt is not None:
            return entry, fmt
    if head is None:
        raise ModelLoadError(f"{path}: is a folder that holds no SavedModel (no saved_model.pb)")
    raise not_a_model(path)


def detect_format(path):
    """The format name of the model at `path` ('keras', 'h5', 'savedmodel', 'tflite', ...)."""
    return find_backend(path)[1]


def open_object(obj):
    """The base.Backend of an in-memory model (a keras.Model) a backend takes, else None."""
    for entry in entries():
        opener = getattr(entry, "open_object", None)  # optional: only some formats live in memory
        backend = opener(obj) if opener is not None else None
        if backend is not None:
            return backend
    return None


def open_model(path, options=None):
    """The base.Backend for the model file or folder at `path`."""
    options = options or OpenOptions()
    entry, fmt = find_backend(path)
    backend = entry.open(str(path), fmt, options)
    backend.unsafe = bool(options.unsafe)  # what runs is checked before it runs
    return backend
