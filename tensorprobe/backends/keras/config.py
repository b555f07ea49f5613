"""A Keras file's stored config, read without TensorFlow, and the checks that refuse what
loading it would run (Python code, TensorFlow functions called while loading)."""

import json
import os
import zipfile

import h5py

from tensorprobe import limits
from tensorprobe.errors import ModelLoadError, UnsafeModelError, UsageError
from tensorprobe.text import first_line

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
MODEL_FILE = "a model is a file or a SavedModel folder"


def open_regular(path, wanted):
    """`path` opened for reading, a UsageError unless it is a regular file (limits.open_regular):
    `wanted` says what was expected there."""
    return limits.open_regular(path, str(path), wanted, UsageError)


def is_keras_archive(path):
    """Whether the zip archive at `path` is a Keras one: it lists a config.json (an .npz, or
    another format's zip, does not). An archive whose member list cannot be read is taken as a
    damaged Keras file, which `read_config` then reports."""
    try:
        with open_regular(path, MODEL_FILE) as f, zipfile.ZipFile(f) as z:
            return "config.json" in z.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError):
        return True


def read_config(path, fmt):
    """The model's stored config (a dict) and the Keras version that wrote it."""
    try:
        if fmt == "keras":
            with open_regular(path, MODEL_FILE) as f, zipfile.ZipFile(f) as z:
                limits.check_zip(path, z, os.fstat(f.fileno()).st_size, ModelLoadError)
                config = json.loads(z.read("config.json"))
                try:
                    meta = json.loads(z.read("metadata.json"))
                except KeyError:
                    meta = {}
            version = meta.get("keras_version", "") if isinstance(meta, dict) else ""
            return config, str(version)
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
    except RecursionError as e:  # JSON nested deeper than Python's stack
        raise ModelLoadError(f"{path}: the model's stored config is nested too deeply to read") from e
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, KeyError, OSError, ValueError,
            EOFError, TypeError) as e:
        raise ModelLoadError(f"{path}: damaged or incomplete model file ({first_line(e)})") from e


# Where Keras and tf_keras rebuild Python code from a stored config (marshalled bytecode,
# which runs when loaded):
# - Keras 3 (and tf_keras' new format) serialises a Python lambda, anywhere in a config (a
#   Lambda layer's function, output_shape or mask, its arguments, any argument of any layer),
#   as {"class_name": "__lambda__", "config": ...}; `deserialize_keras_object` and
#   `Lambda.from_config` load it.
# - tf_keras' legacy format (.h5, SavedModel metadata) stores a function as three keys, NAME,
#   NAME_type and NAME_module, and loads NAME as bytecode when NAME_type is "lambda": a Lambda
#   layer's function, output_shape and mask, the RNN cell wrappers' dropout_fn and
#   residual_fn (`_parse_function_from_config`, `_parse_config_to_function`).
# Both are matched wherever they are, whatever the layer's class says, nested models included.
KERAS3_CODE = "__lambda__"
KERAS2_CODE = "lambda"


def stored_code(config):
    """[(layer name, field)] for every piece of Python code a stored config holds: the field
    is the key it is stored under (function, mask, output_shape, ...); the layer is the
    nearest enclosing object with a name ('?' when there is none)."""
    found = []
    stack = [(config, "?", "config")]  # iterative: a deep config must not exhaust the stack
    while stack:
        node, layer, field = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if "class_name" in node and isinstance(inner, dict) and isinstance(inner.get("name"), str):
                layer = inner["name"]
            if node.get("class_name") == KERAS3_CODE:
                found.append((layer, field))
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_type") and value == KERAS2_CODE:
                    found.append((layer, key[:-len("_type")]))
            stack.extend((value, layer, key) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((value, layer, field) for value in reversed(node))
    return found


def refuse_code(path, config):
    """Raise UnsafeModelError when loading the config would run Python code stored in it."""
    fields = {}
    for layer, field in stored_code(config):
        fields.setdefault(layer, {})[field] = None  # each layer once, its fields in order
    if fields:
        listed = ", ".join(f"'{layer}' ({', '.join(names)})" for layer, names in fields.items())
        which = f"layers {listed} hold" if len(fields) > 1 else f"layer {listed} holds"
        raise UnsafeModelError(
            f"{path}: {which} Python code that loading would run; pass --unsafe only if you trust this file"
        )


# tf_keras records a call of a TensorFlow function on Keras tensors in a functional model as
# an op layer (tf_keras/src/layers/core/tf_op_layer.py): TFOpLambda and SlicingOpLambda store
# the function's API name (`nn.relu`, `__operators__.getitem`), ClassMethod a class's and a
# method's, InstanceMethod and InstanceProperty an attribute of the tensor. Loading looks the
# name up among *all* of TensorFlow's API symbols and calls it on the layer's stored inputs,
# while loading, with no code stored in the file. Two rules keep that to what tf_keras itself
# would have written (they refuse nothing tf_keras saves):
# - every call must take a Keras tensor: tf_keras makes op layers only for a call on one
#   (KerasOpDispatcher.handle), and a call on stored constants alone runs at once, while
#   loading (`io.write_file` wrote its file during `tensorprobe layers`);
# - a TFOpLambda or SlicingOpLambda must name a TensorFlow op, a function with TensorFlow's
#   dispatch support, which is what tf_keras records: such a function only builds ops,
#   symbolically while loading, and the ops are checked before they run, in the traced graph
#   (backends/tfgraph/effects.py, probe.extraction_function). Any other symbol
#   (`io.gfile.remove`, `load_op_library`, `config.*`) would run Python while loading.
#   ClassMethod (tf_keras: RaggedTensor's `from_*` constructors) must name such a function too.
OP_LAYERS = ("TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod", "InstanceProperty")
CONSTANT_INPUT = "_CONSTANT_VALUE"  # tf_keras' mark of a stored constant among a node's inputs


def op_layer_calls(config):
    """[(layer name, class, API symbol or None, method or None, [stored node data])] for every
    op layer of a tf_keras config, nested models included: the symbol is a TFOpLambda's or
    SlicingOpLambda's `function`, a ClassMethod's `cls_symbol` (and `method_name`), None for
    the tensor's own attributes (InstanceMethod, InstanceProperty)."""
    found = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if node.get("class_name") in OP_LAYERS and isinstance(inner, dict):
                kind = node["class_name"]
                symbol, method = inner.get("function"), None
                if kind == "ClassMethod":
                    symbol, method = inner.get("cls_symbol"), str(inner.get("method_name"))
                elif kind in ("InstanceMethod", "InstanceProperty"):
                    symbol = None
                nodes = node.get("inbound_nodes")
                found.append((str(inner.get("name", node.get("name", "?"))), kind,
                              None if symbol is None else str(symbol), method,
                              nodes if isinstance(nodes, list) else []))
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def takes_keras_tensor(node_data):
    """Whether one stored call of a layer takes a Keras tensor, read as tf_keras' process_node
    reads it: an entry is a list of 3 or 4 items that starts with a string ([layer, node,
    tensor(, call kwargs)]), a Keras tensor unless it is a stored constant; in an entry's call
    kwargs, every such list is one."""
    def entries(data):
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, list) and len(item) in (3, 4) and isinstance(item[0], str):
                yield item
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())

    for entry in entries(node_data):
        if entry[0] != CONSTANT_INPUT:
            return True
        if len(entry) == 4 and any(inner[0] != CONSTANT_INPUT for inner in entries(entry[3])):
            return True
    return False


def refuse_op_layers(path, config):
    """Raise UnsafeModelError for op layers of a tf_keras config that loading would run as
    more than building ops on Keras tensors (see OP_LAYERS)."""
    wrong = []
    for name, kind, symbol, method, nodes in op_layer_calls(config):
        what = kind if symbol is None else f"{kind} {symbol}" + (f".{method}" if method else "")
        if not all(takes_keras_tensor(data) for data in nodes):  # a layer never called: none
            wrong.append(f"'{name}' ({what} called on stored constants alone)")
        elif symbol is not None and not _is_tensorflow_op(symbol, method):
            wrong.append(f"'{name}' ({what}, not a TensorFlow op)")
    if wrong:
        shown = ", ".join(wrong[:5]) + (f", ... ({len(wrong)} in all)" if len(wrong) > 5 else "")
        raise UnsafeModelError(f"{path}: layers that call TensorFlow functions while loading: {shown}; "
                               "pass --unsafe only if you trust this file")


def _is_tensorflow_op(symbol, method=None):
    """Whether the TensorFlow API name `symbol` (its attribute `method`, for a ClassMethod)
    is a function with dispatch support (what
    tf_keras' op layers wrap). TensorFlow internals, as tf_keras uses them: the symbol table
    tf_keras' TFOpLambda.from_config looks names up in, and the attribute that
    `tf.__internal__.dispatch.add_dispatch_support` gives every function it wraps."""
    from tensorflow.python.util import dispatch, tf_export

    function = tf_export.get_symbol_from_name(symbol)
    if method is not None:  # ClassMethod: looked up as its from_config and call do
        function = getattr(function, method, None) if function is not None else None
    return function is not None and hasattr(function, dispatch.FALLBACK_DISPATCH_ATTR)
