"""SavedModel directories: hash the folder, choose a signature, load Keras 2 ones with tf_keras.

A SavedModel written by Keras 2 (`model.save(dir, save_format="tf")`) holds
`keras_metadata.pb` next to `saved_model.pb`: tf_keras rebuilds it as a Keras model, so the
layer-level features work on it. Every other SavedModel (Keras 3's `model.export()`,
`tf.saved_model.save` of a `tf.Module`, a tf.keras 2.x model saved without
keras_metadata.pb) is a graph: its signatures are all there is, and `tensorprobe.backends.tfgraph.tensors` and
`tensorprobe.backends.tfgraph.scopes` read them; `keras2_layers` reads the names of the tf.keras 2.x layers
such a graph was traced from, for `scopes`.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorprobe.backends import base
from tensorprobe.backends.keras import config
from tensorprobe.errors import ModelLoadError, UsageError
from tensorprobe.text import first_line

KERAS_METADATA = "keras_metadata.pb"
DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL = "saved_model.pb"
KERAS2_OBJECT = "_tf_keras_"  # the identifier of every layer object tf.keras 2.x saves
KERAS2_MODELS = {"_tf_keras_network", "_tf_keras_model", "_tf_keras_sequential"}
KERAS2_CALL = re.compile(r"__inference_(.+)_layer_call_fn_\d+")


@dataclass
class Signature:
    """One signature of a SavedModel, as a function of positional inputs.

    A signature takes keyword arguments; its concrete function takes them positionally in
    the order of their sorted names (the order `tf.nest.flatten` gives a dict, and the
    order `saved_model_cli show` lists them). `inputs` and `outputs` are in that order.
    """

    name: str
    function: Any  # the tf.types.experimental.ConcreteFunction
    inputs: list  # [tf.TensorSpec], named after the signature's keyword arguments
    outputs: list  # [(output name, tf.TensorSpec)]


def is_savedmodel(path):
    return Path(path).is_dir() and (Path(path) / "saved_model.pb").is_file()


def directory_sha256(path):
    """SHA-256 over a folder's files, independent of the order the file system lists them.

    For every regular file under `path` (recursively, symbolic links followed) one line
    `<hex SHA-256 of its bytes>  <path relative to the folder, '/'-separated>\\n`, the lines
    sorted by relative path (bytewise, UTF-8), hashed together. This is what

        cd DIR && find -L . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum

    prints for names without newlines or backslashes.
    """
    root = Path(path)
    files = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            full = Path(folder) / name
            if full.is_file():
                files.append((full.relative_to(root).as_posix(), full))
    total = hashlib.sha256()
    for rel, full in sorted(files, key=lambda item: item[0].encode("utf-8", "surrogateescape")):
        line = f"{base.file_sha256(full)}  {rel}\n"
        total.update(line.encode("utf-8", "surrogateescape"))
    return total.hexdigest()


def load_savedmodel(path, signature=None, unsafe=False, keras_model=True):
    """Load the SavedModel folder `path` and pick its signature (`signature`, else
    serving_default, else the only one). With `keras_model`, a Keras 2 SavedModel is also
    rebuilt with tf_keras (refusing Lambda layers that hold Python code unless `unsafe`);
    the graph alone never runs stored Python code."""
    path = str(path)
    keras2 = (Path(path) / KERAS_METADATA).is_file()
    if keras2 and keras_model and not unsafe:
        # keras_metadata.pb holds the model's config and each layer's again: check them all
        configs = _keras_metadata_configs(path)
        config.refuse_code(path, configs)
        config.refuse_op_layers(path, configs)
    sha = directory_sha256(path)
    if not unsafe:
        # before loading: TensorFlow's loader itself runs functions of the file (see _effects)
        from tensorprobe.backends.tfgraph import effects

        effects.refuse(path, _effects(path))

    import tensorflow as tf

    try:
        obj = tf.saved_model.load(path)
    except Exception as e:  # a damaged folder fails in many ways; all are the file's problem
        raise ModelLoadError(f"{path}: cannot load the SavedModel: {first_line(e)}") from e
    names = sorted(obj.signatures.keys())
    chosen = _choose_signature(path, names, signature)
    sig = _signature(chosen, obj.signatures[chosen])
    from tensorprobe.backends.tfgraph import scopes

    found = keras2_layers(path)
    naming = scopes.KERAS3 if found is None else scopes.Naming(True, *found)
    if keras2 and keras_model:
        import tf_keras

        from tensorprobe.backends.keras.backend import KerasBackend
        from tensorprobe.backends.keras.graph import generated_names

        try:
            with generated_names(tf_keras):
                model = tf_keras.models.load_model(path, compile=False)
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot load this Keras 2 SavedModel: {first_line(e)}") from e
        backend = KerasBackend(path, model, tf_keras, f"tf_keras {tf_keras.__version__}", "savedmodel", sha,
                               signature=sig, naming=naming)
    else:
        from tensorprobe.backends.tfgraph.backend import GraphBackend

        backend = GraphBackend(path, f"tensorflow {tf.__version__}", "savedmodel", sha, naming, signature=sig)
        backend.signatures = names
    backend.saved_object = obj
    return backend


def _effects(path):
    """The ops acting outside the computation in the SavedModel folder `path`: in the graph
    of each of its MetaGraphs and in every function of their libraries, the saver's own
    checkpoint ops aside (`backends.tfgraph.effects`).

    The whole file is checked, not only the chosen signature, because loading runs more than
    the signature: tf.saved_model.load calls the initializers of the resources it restores
    (a lookup table's, from the file's functions), the restore functions of their saveables,
    and a TF 1 SavedModel's init op; which function runs when is the loader's business, so
    a SavedModel holding such an op anywhere is refused before TensorFlow opens it (its
    tensors are not listed either)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    from tensorprobe.backends.tfgraph import effects

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((Path(path) / SAVED_MODEL).read_bytes())
    except (OSError, DecodeError) as e:
        raise ModelLoadError(f"{path}: damaged {SAVED_MODEL} ({first_line(e)})") from e
    return [found for meta in saved.meta_graphs
            for found in effects.find(meta.graph_def, meta.saver_def if meta.HasField("saver_def") else None)]


def _choose_signature(path, names, wanted):
    listed = ", ".join(names)
    if not names:
        raise ModelLoadError(f"{path}: the SavedModel has no signatures, so there is no graph to run")
    if wanted is None:
        if DEFAULT_SIGNATURE in names:
            return DEFAULT_SIGNATURE
        if len(names) == 1:
            return names[0]
        raise UsageError(
            f"{path}: has no '{DEFAULT_SIGNATURE}' signature; choose one with --signature NAME "
            f"({listed})"
        )
    if wanted not in names:
        raise UsageError(f"--signature '{wanted}': {path} has no such signature; it has {listed}")
    return wanted


def _signature(name, function):
    import tensorflow as tf

    args, kwargs = function.structured_input_signature
    if args:  # signatures take keyword arguments only; kept for functions that do not
        raise ModelLoadError(f"signature '{name}' takes positional arguments, which tensorprobe cannot name")
    inputs = [tf.TensorSpec(spec.shape, spec.dtype, name=key) for key, spec in sorted(kwargs.items())]
    structured = function.structured_outputs
    if isinstance(structured, dict):
        outputs = sorted(structured.items())
    else:
        flat = tf.nest.flatten(structured)
        outputs = [(f"output_{i}", spec) for i, spec in enumerate(flat)]
    return Signature(name, function, inputs, outputs)


def _keras_metadata_configs(path):
    """The config of every object in keras_metadata.pb (JSON per saved Keras object: tf_keras
    rebuilds each layer, nested models' too, from its own), for `config.refuse_code`."""
    from google.protobuf.message import DecodeError
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata()
    try:
        with config.open_regular(Path(path) / KERAS_METADATA, "a SavedModel's keras_metadata.pb is a file") as f:
            meta.ParseFromString(f.read())
        return [json.loads(node.metadata) for node in meta.nodes if node.metadata]
    except RecursionError as e:  # JSON nested deeper than Python's stack
        raise ModelLoadError(f"{path}: a config in {KERAS_METADATA} is nested too deeply to read") from e
    except (OSError, ValueError, DecodeError) as e:
        raise ModelLoadError(f"{path}: damaged {KERAS_METADATA} ({first_line(e)})") from e


def keras2_layers(path):
    """(layer names, model names) of the tf.keras 2.x layers saved in the SavedModel folder
    `path`, from its object graph; None when it saves none (Keras 3's export, a tf.Module).

    tf.keras 2.x saves every layer it reaches (with `model.save(dir, save_format="tf")` or
    `tf.saved_model.save(model, dir)`, with or without keras_metadata.pb) as an object whose
    identifier starts with `_tf_keras_` (`_tf_keras_network` for a functional model); Keras 3
    saves its layers as plain `_generic_user_object`s. The object graph keeps no layer name,
    so it is read where tf.keras writes it (a tf.keras convention, stable through TF 2.x):
    the layer's traced call function, `__inference_<name>_layer_call_fn_<uid>` (its
    `__call__` child), else its weights' names, `<scope>/<name>/<weight>`. A layer with
    neither (no weights and never traced alone: a TFOpLambda, a weightless sub-layer of a
    custom layer) stays nameless."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()  # tf.saved_model.load has read this file already
    saved.ParseFromString((Path(path) / SAVED_MODEL).read_bytes())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    keras2 = [n for n in nodes
              if n.WhichOneof("kind") == "user_object" and n.user_object.identifier.startswith(KERAS2_OBJECT)]
    if not keras2:
        return None
    layers, models = set(), set()
    for node in keras2:
        name = _keras2_layer_name(nodes, node)
        if name:
            layers.add(name)
            if node.user_object.identifier in KERAS2_MODELS:
                models.add(name)
    return frozenset(layers), frozenset(models)


def _keras2_layer_name(nodes, node):
    children = {child.local_name: nodes[child.node_id] for child in node.children}
    call = children.get("__call__")
    if call is not None and call.WhichOneof("kind") == "function":
        for function in call.function.concrete_functions:
            m = KERAS2_CALL.fullmatch(function)
            if m:
                return m.group(1)
    for child in children.values():
        if child.WhichOneof("kind") == "variable":
            parts = child.variable.name.split(":")[0].split("/")
            if len(parts) > 1:
                return parts[-2]
    return None
