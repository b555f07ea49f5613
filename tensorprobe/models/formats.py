"""What kind of model file a path is, and what its stored config says, read without TensorFlow."""

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import h5py

from tensorprobe import limits
from tensorprobe.errors import ModelLoadError, UnsafeModelError, UsageError
from tensorprobe.text import first_line

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8 (after the root offset)


NOT_A_MODEL = ("not a model file tensorprobe reads (a .keras zip archive, an HDF5 .h5 file, a SavedModel "
               "folder, a TensorFlow 1 frozen graph .pb or .pbtxt, or a TensorFlow Lite .tflite file)")


def detect_format(path):
    """'keras' (a Keras 3 zip), 'h5' (HDF5), 'tflite' (a TFLite flatbuffer), 'savedmodel' (a
    folder), 'frozen_graph' or 'frozen_graph_text' (a GraphDef, binary or text protobuf), from
    the contents."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path}: is a folder that holds no SavedModel (no saved_model.pb)")
    with open_regular(path, MODEL_FILE) as f:
        head = f.read(PROTOBUF_HEAD)
    if head.startswith(ZIP_SIGNATURE):
        return "keras"
    if head[:8] == HDF5_SIGNATURE:
        return "h5"
    if head[4:8] == TFLITE_IDENTIFIER:  # before the protobuf check: any bytes may look like one
        return "tflite"
    if path.suffix.lower() == ".tflite":
        raise ModelLoadError(f"{path}: not a TFLite model (no '{TFLITE_IDENTIFIER.decode()}' flatbuffer "
                             "identifier at bytes 4-8)")
    kind = protobuf_kind(head)
    if kind == "saved_model":
        raise ModelLoadError(f"{path}: is a SavedModel's saved_model.pb (a SavedModel proto), not a frozen "
                             f"graph; pass the folder that holds it: {path.parent}")
    if kind is not None:
        return kind
    raise ModelLoadError(f"{path}: {NOT_A_MODEL}")


MODEL_FILE = "a model is a file or a SavedModel folder"


def open_regular(path, wanted):
    """`path` opened for reading, a UsageError unless it is a regular file (limits.open_regular):
    `wanted` says what was expected there."""
    return limits.open_regular(path, str(path), wanted, UsageError)


# Protobuf files are recognised by how they begin, without TensorFlow (which has their
# schemas) and without reading a large file whole: a parse proves nothing anyway, since any
# bytes that happen to be well-formed parse as any message. Serialisers write fields in
# field-number order, so a binary GraphDef starts with its first NodeDef (field 1), whose
# own first fields are its name (1) and op type (2); a SavedModel starts with its schema
# version (field 1, a varint: 0 or 1), then its MetaGraphDefs (field 2). The text format
# starts with a field name, after blank and `#` comment lines. The loader parses the file.
PROTOBUF_HEAD = 1 << 16
GRAPH_DEF_FIELDS = {"node", "library", "versions", "version"}
SAVED_MODEL_FIELDS = {"saved_model_schema_version", "meta_graphs"}
TEXT_FIELD = re.compile(r"(?:\s|#[^\n]*\n)*([A-Za-z_]\w*)\s*[{:<]")
OP_TYPE = re.compile(rb"[A-Za-z0-9_>]+")


def protobuf_kind(head):
    """'frozen_graph' (binary GraphDef), 'frozen_graph_text' (text GraphDef), 'saved_model'
    (a SavedModel proto, binary or text) or None, from the first bytes of a file."""
    if head[:1] == b"\x0a":  # field 1 (node), length-delimited
        _, i = _varint(head, 1)
        if head[i:i + 1] == b"\x0a":  # NodeDef.name
            size, i = _varint(head, i + 1)
            name = head[i:i + size] if size else b""
            if name and len(name) == size and head[i + size:i + size + 1] == b"\x12":  # NodeDef.op
                size, i = _varint(head, i + size + 1)
                if size and OP_TYPE.fullmatch(head[i:i + size]):
                    return "frozen_graph"
    if head[:1] == b"\x08":  # field 1 (saved_model_schema_version), varint
        version, i = _varint(head, 1)
        if version in (0, 1) and head[i:i + 1] == b"\x12":  # a MetaGraphDef, its fields 1 or 2 first
            _, i = _varint(head, i + 1)
            if head[i:i + 1] in (b"\x0a", b"\x12"):
                return "saved_model"
    if b"\0" in head:
        return None
    m = TEXT_FIELD.match(head.decode("utf-8", "replace"))
    field = m.group(1) if m else None
    if field in GRAPH_DEF_FIELDS:
        return "frozen_graph_text"
    if field in SAVED_MODEL_FIELDS:
        return "saved_model"
    return None


def _varint(data, i):
    """(value, index after it) of the protobuf varint at data[i]; (None, len) when cut short."""
    value = shift = 0
    while i < len(data) and shift < 64:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return None, len(data)


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


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


