"""A backend for the tests that runs without TensorFlow: a model of two dense layers computed
in NumPy, stored in a small file format of its own. It goes through the registry
(backends/detect.py) and the Backend interface (backends/base.py) like the real formats, so
the pipeline (dump, compare, --shard/merge, --resume) is tested in milliseconds, and a
subprocess can check that nothing above `backends/` imports TensorFlow.

The format: an .npz (zip) archive whose first member is MARKER (the format version), then
`input_shape` (one sample's shape), `w1`, `b1`, `w2`, `b2`; recognised by that first member's
name in the zip's first local header, whatever the file is called. The model is

    x (None, *input_shape) -> dense1 = flatten(x) @ w1 + b1 -> relu -> dense2 = relu @ w2 + b2

computed in the weights' dtype (float32, or float16: `precision()` says so). Its layers are
`x` (InputLayer), `dense1` and `dense2` (Dense), `relu` (ReLU); its tensors are named as a
TensorFlow graph names them (`dense1/MatMul:0`, `dense1/BiasAdd:0`, ...), the layers' outputs
among them, and its kernels and biases are constant tensors (`dense1/kernel:0`), which depend
on no input.

Register it with `detect.REGISTRY.append("numpy_backend")` (tests/ on sys.path).
"""

import builtins
import struct
import zipfile
from dataclasses import dataclass, field

import numpy as np

from tensorprobe.backends import base
from tensorprobe.errors import InputError, ModelLoadError
from tensorprobe.text import first_line

DESCRIPTION = "a tensorprobe NumPy test model (.npz)"
FORMAT = "numpy_dense"
MARKER = "tensorprobe_numpy_dense"
VERSION = 1
WEIGHTS = ("w1", "b1", "w2", "b2")
ZIP_LOCAL_HEADER = b"PK\x03\x04"


# ---- the file format -----------------------------------------------------------------------

def save(path, w1, b1, w2, b2, input_shape=None):
    """Write a model file; `input_shape` (one sample's) defaults to (w1's rows,)."""
    input_shape = (len(w1),) if input_shape is None else tuple(input_shape)
    arrays = {MARKER: np.array(VERSION), "input_shape": np.array(input_shape, dtype=np.int64),
              "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    # a file object (the module's `open` is the registry's): np.savez adds .npz to a name without it
    with builtins.open(path, "wb") as f:
        np.savez(f, **arrays)  # members in this order: MARKER first


def guess_can_open(path, head):
    """FORMAT for a zip archive whose first member is MARKER's array; None otherwise."""
    if head is None or not head.startswith(ZIP_LOCAL_HEADER) or len(head) < 30:
        return None
    name_length = struct.unpack("<H", head[26:28])[0]
    return FORMAT if head[30:30 + name_length] == f"{MARKER}.npy".encode() else None


def open(path, fmt, options):
    """Nothing in the file runs: `unsafe` and custom objects do not apply; it has no
    signatures and no quantized tensors."""
    options.refuse(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ModelLoadError(f"{path}: damaged NumPy test model ({first_line(e)})") from e
    version = arrays.get(MARKER)
    if version is None or version.shape != () or int(version) != VERSION:
        raise ModelLoadError(f"{path}: NumPy test model of an unknown version (expected {MARKER} = {VERSION})")
    missing = [name for name in ("input_shape", *WEIGHTS) if name not in arrays]
    if missing:
        raise ModelLoadError(f"{path}: NumPy test model without {', '.join(missing)}")
    return NumpyDenseBackend(path, tuple(int(d) for d in arrays["input_shape"]),
                             *(arrays[name] for name in WEIGHTS))


# ---- symbolic values, layers and the two graphs --------------------------------------------

class Shape(tuple):
    """A static shape, None for the batch: a tuple that also answers what TensorFlow's
    TensorShape does where the interface reads the tensor graph's inputs (`rank`, `as_list`)."""

    @property
    def rank(self):
        return len(self)

    def as_list(self):
        return list(self)


@dataclass(frozen=True)
class Symbol:
    """A symbolic value: a model input (the tensor graph's `inputs`, as a tf.TensorSpec is),
    or a layer call's output (LayerEntry.calls)."""

    name: str
    shape: Shape
    dtype: np.dtype


class InputLayer:
    def __init__(self, name):
        self.name = name


class Dense:
    def __init__(self, name, kernel, bias):
        self.name, self.kernel, self.bias = name, kernel, bias


class ReLU:
    def __init__(self, name):
        self.name = name


@dataclass
class LayerGraph:
    entries: dict  # path -> base.LayerEntry, in model order
    inputs: list  # [Symbol]

    def layer_of(self, tensor_name):
        """The layer whose scope holds the tensor (`dense1/MatMul:0` -> `dense1`), else ''."""
        scope = tensor_name.rpartition(":")[0].split("/")[0]
        return scope if scope in self.entries else ""


@dataclass
class TensorGraph:
    """The tensors in the order they are computed, the constants first; `compute(x)` gives
    every tensor's value."""

    tensors: list  # [TensorInfo]
    inputs: list  # [Symbol]
    input_tensors: list  # their tensor names
    outputs: list  # [(output name, tensor name)]
    compute: object  # x -> {tensor name: array}
    source: str = "NumPy forward pass"
    constants: set = field(default_factory=set)
    by_name: dict = field(default_factory=dict)

    def __post_init__(self):
        self.by_name = {t.name: t for t in self.tensors}

    def op_types(self):
        return sorted({t.op for t in self.tensors})

    def why_not_dumpable(self, info):
        if info.name in self.constants:
            return "does not depend on the inputs (a constant), so it has no batch axis"
        return None

    def extraction_function(self, names):
        """run(list of input batches[, labels]) -> one array per tensor name of `names`."""
        names = list(names)
        spec = self.inputs[0]

        def run(batch, labels=None):
            if len(batch) != 1:
                raise InputError(f"the model takes 1 input ({spec.name}), got {len(batch)}")
            x = np.asarray(batch[0])
            if x.shape[1:] != spec.shape[1:]:
                raise InputError(f"input '{spec.name}': samples of shape {x.shape[1:]}, the model takes "
                                 f"{spec.shape[1:]}")
            values = self.compute(x.astype(spec.dtype, copy=False))
            return [values[name] for name in names]

        return run


# ---- the backend ---------------------------------------------------------------------------

class NumpyDenseBackend(base.Backend):
    kind = "NumPy test model"

    def __init__(self, path, input_shape, w1, b1, w2, b2):
        super().__init__()
        dtypes = {a.dtype for a in (w1, b1, w2, b2)}
        if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float16, np.float32):
            raise ModelLoadError(f"{path}: NumPy test model weights must all be float16 or float32, not "
                                 f"{', '.join(sorted(str(d) for d in dtypes))}")
        features = int(np.prod(input_shape))
        if w1.shape[:1] != (features,) or b1.shape != w1.shape[1:] or w2.shape[:1] != b1.shape \
                or b2.shape != w2.shape[1:]:
            raise ModelLoadError(f"{path}: NumPy test model weights do not chain: input {input_shape}, w1 "
                                 f"{w1.shape}, b1 {b1.shape}, w2 {w2.shape}, b2 {b2.shape}")
        self.path, self.format, self.sha256 = str(path), FORMAT, base.file_sha256(path)
        self.loader = f"numpy {np.__version__}"
        self.dtype = w1.dtype
        self.input = Symbol("x", Shape((None, *input_shape)), self.dtype)
        self.dense1, self.relu, self.dense2 = Dense("dense1", w1, b1), ReLU("relu"), Dense("dense2", w2, b2)

    # ---- the computation ---------------------------------------------------------------

    def _compute(self, x):
        """{tensor name: value} of every tensor for the batch `x`."""
        values = {"x:0": x}
        source = x.reshape(len(x), -1)
        for dense in (self.dense1, self.dense2):
            product = source @ dense.kernel
            values[f"{dense.name}/MatMul:0"] = product
            values[f"{dense.name}/BiasAdd:0"] = output = product + dense.bias
            if dense is self.dense1:
                values["relu/Relu:0"] = source = np.maximum(output, 0)
        return values

    def _outputs(self):
        """(layer, the tensor name of its output, its shape), in model order."""
        hidden, units = self.dense1.kernel.shape[1], self.dense2.kernel.shape[1]
        return [(InputLayer("x"), "x:0", self.input.shape), (self.dense1, "dense1/BiasAdd:0", Shape((None, hidden))),
                (self.relu, "relu/Relu:0", Shape((None, hidden))),
                (self.dense2, "dense2/BiasAdd:0", Shape((None, units)))]

    # ---- what it holds -----------------------------------------------------------------

    def _build_layer_graph(self):
        entries = {}
        for k, (layer, tensor, shape) in enumerate(self._outputs()):
            symbol = Symbol(tensor, shape, self.dtype)
            entries[layer.name] = base.LayerEntry(path=layer.name, index=str(k), depth=0, layer=layer, parent=None,
                                                  reach="graph", calls=[[(symbol, tensor)]])
        return LayerGraph(entries, [self.input])

    def _build_tensor_graph(self):
        from tensorprobe.backends.tensors import TensorInfo

        dtype = self.dtype.name
        constants = [(f"{d.name}/{part}:0", "Const", array.shape)
                     for d in (self.dense1, self.dense2) for part, array in (("kernel", d.kernel), ("bias", d.bias))]
        hidden, units = self.dense1.kernel.shape[1], self.dense2.kernel.shape[1]
        computed = [("x:0", "Placeholder", self.input.shape),
                    ("dense1/MatMul:0", "MatMul", (None, hidden)), ("dense1/BiasAdd:0", "BiasAdd", (None, hidden)),
                    ("relu/Relu:0", "Relu", (None, hidden)),
                    ("dense2/MatMul:0", "MatMul", (None, units)), ("dense2/BiasAdd:0", "BiasAdd", (None, units))]
        tensors = [TensorInfo(name, op, dtype, list(shape), k)
                   for k, (name, op, shape) in enumerate(constants + computed)]
        return TensorGraph(tensors, [self.input], ["x:0"], [("dense2", "dense2/BiasAdd:0")], self._compute,
                           constants={name for name, _, _ in constants})

    def describe(self):
        layers = []
        for layer, _, shape in self._outputs():
            params = layer.kernel.size + layer.bias.size if isinstance(layer, Dense) else 0
            entry = self.layer_graph.entries[layer.name]
            layers.append(base.LayerInfo(index=entry.index, path=entry.path, name=entry.name,
                                         class_name=entry.class_name, depth=0, output_shape=[list(shape)], calls=1,
                                         params=params, trainable=False, reach="graph"))
        params = sum(layer.params for layer in layers)
        units = self.dense2.kernel.shape[1]
        return base.ModelInfo(name="numpy_dense", inputs=[("x", list(self.input.shape), self.dtype.name)],
                              outputs=[("dense2", [None, units], self.dtype.name)], params=params,
                              trainable_params=0, layers=layers)  # nothing trains in NumPy

    # ---- running: the base runner (the tensor graph's extraction function) -------------

    def estimate(self, plan, storage):
        """The datasets' bytes, from the static shapes (values are stored as computed: the
        base check() refuses --dtype and --reduce)."""
        from tensorprobe import store

        by_name = self.tensor_graph.by_name
        datasets = []
        for origin in plan.origins:
            shape = by_name[origin].shape[1:]
            datasets.append((int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize, shape[-1] if shape else 0))
        return lambda rows, batch_rows: store.datasets_bytes(datasets, rows, batch_rows)

    # ---- what it is --------------------------------------------------------------------

    def versions(self):
        return {"numpy_version": np.__version__}

    def precision(self):
        return base.narrowest({self.dtype.name})
