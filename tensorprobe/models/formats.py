"""What kind of model file a path is, and what its stored config says, read without TensorFlow."""

import hashlib
import json
import zipfile
from pathlib import Path

import h5py

from tensorprobe.errors import ModelLoadError, UnsafeModelError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8 (after the root offset)


def detect_format(path):
    """'keras' (a Keras 3 zip), 'h5' (HDF5), 'tflite' (a TFLite flatbuffer) or 'savedmodel'
    (a folder), from the contents."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path}: is a folder that holds no SavedModel (no saved_model.pb)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(ZIP_SIGNATURE):
        return "keras"
    if head == HDF5_SIGNATURE:
        return "h5"
    if head[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    if path.suffix.lower() == ".tflite":
        raise ModelLoadError(f"{path}: not a TFLite model (no '{TFLITE_IDENTIFIER.decode()}' flatbuffer "
                             "identifier at bytes 4-8)")
    raise ModelLoadError(
        f"{path}: not a Keras model file (expected a .keras zip archive, an HDF5 .h5 file or a "
        "TFLite flatbuffer)"
    )


def read_config(path, fmt):
    """The model's stored config (a dict) and the Keras version that wrote it."""
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                try:
                    meta = json.loads(z.read("metadata.json"))
                except KeyError:
                    meta = {}
            return config, str(meta.get("keras_version", ""))
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ModelLoadError(
                    f"{path}: HDF5 file holds no model (no 'model_config' attribute; "
                    "a weights-only file cannot be loaded on its own)"
                )
            version = f.attrs.get("keras_version", b"")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return config, version.decode() if isinstance(version, bytes) else str(version)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError) as e:
        raise ModelLoadError(f"{path}: damaged or incomplete model file ({first_line(e)})") from e


def lambda_layers_with_code(config):
    """Names of Lambda layers in a stored config whose function is serialised Python code.

    Keras 3 stores such a function as {"class_name": "__lambda__", ...}; Keras 2 marks it
    with "function_type": "lambda". A Lambda that names a registered function holds no code.
    """
    found = []

    def visit(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda" and isinstance(node.get("config"), dict):
                cfg = node["config"]
                fn = cfg.get("function")
                keras3_code = isinstance(fn, dict) and fn.get("class_name") == "__lambda__"
                keras2_code = cfg.get("function_type") == "lambda"
                if keras3_code or keras2_code:
                    found.append(cfg.get("name", "?"))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return found


def refuse_code(path, config):
    """Raise UnsafeModelError when loading the config would run Python code stored in it."""
    names = list(dict.fromkeys(lambda_layers_with_code(config)))  # each layer once
    if names:
        listed = ", ".join(f"'{n}'" for n in names)
        raise UnsafeModelError(
            f"{path}: Lambda layer {listed} holds Python code that loading would run; "
            "pass --unsafe only if you trust this file"
        )


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_line(exc):
    """An exception's message in one line of at most 300 characters, for error messages."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
