"""A TFLite file as a graph of tensors: its interpreter, every tensor in execution order with
the op that makes it and its quantization, and how its inputs are fed.

The interpreter is TensorFlow's `tf.lite.Interpreter`, not LiteRT's `ai_edge_litert`: it is the
one that ships with the TensorFlow that tensorprobe already needs (so nothing more to install,
and the same release as the `tf.lite.TFLiteConverter` that made the file), and it runs the same
kernels. It is created

- from the file's bytes (`model_content`), never its path: only that way does it verify the
  flatbuffer, and a truncated file raises an error instead of crashing the process (TF 2.21:
  `model_path` on a truncated file is a segmentation fault);
- with `experimental_preserve_all_tensors=True`, else the memory planner reuses the buffers of
  intermediate tensors and what is read back after `invoke` is another tensor's data;
- with `OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`, so that no XNNPACK delegate takes
  over parts of the graph: every op runs TFLite's own built-in kernel (whose values are the
  reference the file is judged by) and every intermediate tensor exists;
- with one thread, so that values do not depend on the machine.

The interpreter lists ops only through a private method (`_get_ops_details`); it is read in
`_ops` alone, and tests/test_tflite.py fails loudly if a TensorFlow upgrade changes it. It runs
the ops in the file's order without checking it: a file whose op reads a tensor made by itself
or a later op (a cyclic graph) is refused when it is loaded.

After the file's tensors come the interpreter's own (op `SCRATCH`): its kernels' temporaries
(im2col buffers, a hybrid op's quantized input, scaling factors and row sums), unnamed or
sharing one name, picked by `#INDEX`; those whose first axis follows the batch can be dumped
(found by allocating for one more sample), and the slots with no shape are listed as such
(`_shapeless`, private too).
"""

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tensorprobe import errors
from tensorprobe.backends.tflite.quantization import Quantization
from tensorprobe.errors import ModelLoadError, UsageError
from tensorprobe.backends.tensors import TensorInfo, input_name
from tensorprobe.text import first_line, shape_text

INPUT_OP = "INPUT"  # the `op` of a model input, which no op makes
CONST_OP = "CONST"  # the `op` of a tensor that no op makes: weights, biases, shapes
SCRATCH_OP = "SCRATCH"  # the `op` of a tensor the interpreter's kernels add, not in the file
UNSTORABLE = ("object", "bytes", "str", "resource", "variant")


FLEX_PREFIX = "Flex"  # the converter's name for a Select TensorFlow op: "Flex" + its TF op type
SHOWN_OPS = 5


def open_interpreter(path, content):
    """A tf.lite.Interpreter over `content` (the bytes of the file at `path`), its tensors
    allocated; a ModelLoadError when the file is damaged or holds an op the interpreter lacks."""
    import tensorflow as tf

    with warnings.catch_warnings():
        # "tf.lite.Interpreter is deprecated": TF 2.21 still ships it, and it is what runs here;
        # "preserve_all_tensors ... for debugging": which is what it is for here
        warnings.simplefilter("ignore")
        try:
            interpreter = tf.lite.Interpreter(
                model_content=content,
                experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                num_threads=1,
            )
        except (ValueError, RuntimeError) as e:  # "The model is not a valid Flatbuffer buffer"
            raise ModelLoadError(f"{path}: damaged or truncated TFLite file ({first_line(e)})") from e
    # Select TensorFlow ops (Flex, "FlexWriteFile") are TensorFlow kernels, file and Python ops
    # included, that only a Flex delegate runs. This interpreter has none (no default
    # delegates, and the Flex delegate is not linked in): they are refused here, before
    # allocation, so that no build of TensorFlow that links one could ever run them.
    flex = sorted({name for _, name, _, _ in _ops(interpreter) if name.startswith(FLEX_PREFIX)})
    if flex:
        shown = ", ".join(flex[:SHOWN_OPS]) + (f", ... ({len(flex)} in all)" if len(flex) > SHOWN_OPS else "")
        raise ModelLoadError(f"{path}: holds Select TensorFlow (Flex) ops, which tensorprobe's TFLite interpreter "
                             f"does not run: {shown}")
    try:
        interpreter.allocate_tensors()
    except RuntimeError as e:  # an op no kernel implements: a custom op
        raise ModelLoadError(f"{path}: the TFLite interpreter cannot run this model: {first_line(e)}") from e
    return interpreter


def _ops(interpreter):
    """(index, op type, input indices, output indices) of every op of the main subgraph, in
    execution order. Quarantined: `_get_ops_details` is the interpreter's only way to list its
    ops, and it is private."""
    return [(int(op["index"]), str(op["op_name"]), [int(i) for i in op["inputs"] if i >= 0],
             [int(i) for i in op["outputs"] if i >= 0]) for op in interpreter._get_ops_details()]


def _shapeless(interpreter, listed):
    """{index: (name, dtype name)} of the interpreter's tensors that `get_tensor_details`
    leaves out (it skips a tensor with no shape: slots its kernels reserved and never set
    up), dtype "notype" when it has none. Quarantined: only the interpreter's private wrapper
    counts and describes them."""
    wrapper = interpreter._interpreter
    found = {}
    for index in range(wrapper.NumTensors(0)):
        if index in listed:
            continue
        try:
            dtype = np.dtype(wrapper.TensorType(index, 0)).name
        except (ValueError, TypeError):  # "Tensor with no type found."
            dtype = "notype"
        found[index] = (wrapper.TensorName(index, 0), dtype)
    return found


def _signatures(interpreter):
    """{signature name: its subgraph index}. Quarantined: a SignatureRunner says its subgraph
    only in a private attribute."""
    found = {}
    for name in interpreter.get_signature_list():
        found[name] = getattr(interpreter.get_signature_runner(name), "_subgraph_index", 0)
    return found


@dataclass
class TFLiteOp:
    index: int
    type: str  # "CONV_2D", "FULLY_CONNECTED", or a custom op's name
    inputs: list  # tensor indices
    outputs: list


@dataclass
class TFLiteTensor(TensorInfo):
    """One tensor of the file. `shape` is its shape signature: None where it is -1 (a dynamic
    batch); `op` the type of the op that makes it (INPUT, CONST for the others no op makes)."""

    index: int = -1
    quantization: Quantization | None = None
    producer: int | None = None  # the index of the op that makes it

    @property
    def number(self):
        return self.index

    @property
    def origin(self):
        return self.index

    @property
    def dataset_name(self):
        """`<first name of the ';'-joined list>#<index>`: its '/' open groups as in a TensorFlow
        name, and the index keeps two tensors apart whatever their names (`scratch#29`,
        `Conv_row_sums#17` for the interpreter's own tensors)."""
        parts = [p if p not in (".", "..") else "_" for p in self.name.split(";")[0].replace("#", "_").split("/")]
        base = "/".join(p for p in parts if p) or ("scratch" if self.op == SCRATCH_OP else "tensor")
        return f"{base}#{self.index}"

    def attributes(self):
        attrs = {"tensor": self.name, "tensor_index": self.index, "op_type": self.op}
        if self.quantization is not None:
            attrs.update(self.quantization.attributes())
        return attrs

    @property
    def layer_attributes(self):
        """The attributes a layer's dataset of this tensor carries: the same."""
        return self.attributes()

    def extra_cells(self):
        return {"quantization": self.quantization.text() if self.quantization is not None else ""}

    def to_json(self):
        return {"index": self.index, "name": self.name, "op": self.op, "dtype": self.dtype, "shape": self.shape,
                "quantization": self.quantization.to_json() if self.quantization is not None else None}


@dataclass
class TFLiteGraph:
    """The main subgraph of a TFLite file, with the interface of tensors.TensorGraph that
    `tensors`, `dump --tensor` and the layers of `scopes` use."""

    interpreter: object
    ops: list  # [TFLiteOp], execution order
    tensors: list  # [TFLiteTensor]: the inputs, then each op's constant inputs and its outputs
    inputs: list  # [tf.TensorSpec] in feed order: batch axis None; float32 for quantized inputs
    input_tensors: list  # the input tensors' names (`#INDEX` as in outputs), same order
    input_indices: list  # their indices
    outputs: list  # [(output name, tensor name, or `#INDEX` when the name is not its own)]
    output_indices: list  # their tensors' indices, same order
    source: str
    batch: int | None  # the fixed batch size of the inputs; None when it is dynamic
    raw_quantized: bool = False  # extraction returns the integers of quantized tensors
    signature: str | None = None  # the main subgraph's signature, when the file names it
    batched: frozenset = frozenset()  # indices of the scratch tensors whose first axis is the batch
    fed: set = field(default_factory=set)  # indices of the tensors computed from the inputs
    by_name: dict = field(default_factory=dict)
    by_index: dict = field(default_factory=dict)

    def __post_init__(self):
        self.by_index = {t.index: t for t in self.tensors}
        fed = set(self.input_indices)
        for op in self.ops:
            if any(i in fed for i in op.inputs):
                fed.update(op.outputs)
        self.fed = fed
        self.by_name = _names(self.tensors)

    def op_types(self):
        return sorted({t.op for t in self.tensors})

    def extraction_function(self, indices):
        from tensorprobe.backends.tflite.runner import extraction_function

        return extraction_function(self, list(indices))

    def why_not_dumpable(self, info):
        if info.op == SCRATCH_OP:
            if info.shape is None:
                return "is a slot the interpreter reserved for its kernels and never gave a shape: it holds nothing"
            if info.index not in self.batched:
                return ("is a scratch tensor of the interpreter's kernels whose first axis does not follow the "
                        "number of samples, so it has no batch axis")
        elif info.index not in self.fed:
            return "does not depend on the inputs (a constant), so it has no batch axis"
        if info.dtype in UNSTORABLE:
            return f"holds {info.dtype} values, which cannot be stored as an array"
        if not info.shape or info.shape[0] != self.batch:
            why = "" if self.batch is None else f" (the model's inputs have a fixed batch of {self.batch})"
            return f"has shape {shape_text(info.shape, '?')}, which has no batch axis{why}"
        return None


def _names(tensors):
    """Name -> tensor: each exact name that one tensor alone bears (the interpreter's scratch
    tensors are unnamed or share one: `Conv_row_sums`), `#INDEX` for every tensor, and each
    part of a ';'-joined name that no other tensor's name holds."""
    names, shared = {}, set()
    for t in tensors:
        if t.name in names:
            shared.add(t.name)
        names[t.name] = t
    for name in shared:
        del names[name]
    parts = {}
    for t in tensors:
        for part in set(t.name.split(";")) - {t.name, ""}:
            parts.setdefault(part, []).append(t)
    for part, holders in parts.items():
        if len(holders) == 1 and part not in names and part not in shared:
            names[part] = holders[0]
    for t in tensors:
        names[f"#{t.index}"] = t
    return names


def stored_tensors(content):
    """How many tensors the file's main subgraph holds (the interpreter adds its own after
    them), from the flatbuffer the interpreter has verified."""
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.Model.GetRootAs(content, 0).Subgraphs(0).TensorsLength()


def read_graph(interpreter, path, signature=None, raw_quantized=False, stored=None):
    """The TFLiteGraph of the interpreter's main subgraph. `signature` must name the
    signature of that subgraph (None: whichever it is); `stored` is how many tensors the
    file holds (`stored_tensors`), the others are the interpreter's (None: those no op reads
    or makes)."""
    import tensorflow as tf

    signatures = _signatures(interpreter)
    main = [name for name, subgraph in signatures.items() if subgraph == 0]
    if signature is not None and signature not in signatures:
        listed = ", ".join(signatures) or "none"
        raise UsageError(f"{errors.name('signature')} '{signature}': {path} has no such signature; it has {listed}",
                         argument="signature")
    if signature is not None and signature not in main:
        raise UsageError(f"{errors.name('signature')} '{signature}': tensorprobe runs the main subgraph of a TFLite "
                         f"file, whose signature is {', '.join(main) or 'unnamed'}", argument="signature")
    name = signature or (main[0] if main else None)
    input_names, output_names = _signature_names(interpreter, name) if name is not None else ({}, {})

    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = [TFLiteOp(*op) for op in _ops(interpreter)]
    input_indices = [int(d["index"]) for d in interpreter.get_input_details()]
    output_indices = [int(d["index"]) for d in interpreter.get_output_details()]
    producer = _producers(path, ops, details)

    order = list(input_indices)
    for op in ops:
        order += op.inputs + op.outputs
    order += output_indices
    if stored is not None:  # tensors of the file that no op reads or makes: constants too
        order += range(stored)
    tensors, seen = [], set()
    for index in order:
        if index in seen or index not in details:
            continue
        seen.add(index)
        d = details[index]
        op = producer.get(index)
        kind = op.type if op is not None else INPUT_OP if index in input_indices else CONST_OP
        dtype = np.dtype(d["dtype"]).name
        signature_shape = [None if int(s) < 0 else int(s) for s in d["shape_signature"]]
        tensors.append(TFLiteTensor(
            d["name"], kind, dtype, signature_shape, len(tensors), index=index,
            quantization=Quantization.of(d["dtype"], d["quantization_parameters"]),
            producer=op.index if op is not None else None,
        ))
    by_index = {t.index: t for t in tensors}
    batch, specs = _batch(path, [by_index[i] for i in input_indices]), []

    # the interpreter's own tensors, after the file's (it says which op made none of them):
    # its kernels' temporaries (im2col buffers, a hybrid op's quantized input and row sums,
    # unnamed or sharing one name) and the slots they reserved without a shape
    scratch = [i for i in sorted(details) if i not in seen]
    batched = _batched(interpreter, input_indices, scratch) if scratch else set()
    described = {i: (details[i]["name"], details[i]["dtype"], details[i]) for i in scratch}
    described.update((i, (n, dtype, None)) for i, (n, dtype) in _shapeless(interpreter, details).items())
    for index in sorted(described):
        tensor_name, dtype, d = described[index]
        shape = [int(s) for s in d["shape"]] if d is not None else None
        if index in batched and batch is None:
            shape[0] = None
        quantization = Quantization.of(dtype, d["quantization_parameters"]) if d is not None else None
        tensors.append(TFLiteTensor(tensor_name, SCRATCH_OP, np.dtype(dtype).name if d is not None else dtype,
                                    shape, len(tensors), index=index, quantization=quantization))

    for k, index in enumerate(input_indices):
        t = by_index[index]
        dtype = "float32" if t.quantization is not None else t.dtype
        key = input_names.get(index) or input_name(t.name, k)
        specs.append(tf.TensorSpec((None, *t.shape[1:]), dtype, name=key))
    bearers = Counter(t.name for t in tensors)

    def key(index):  # what `by_name` knows the tensor by: its name, or `#INDEX` when others bear it too
        return by_index[index].name if bearers[by_index[index].name] == 1 else f"#{index}"

    outputs = [(output_names.get(i) or f"output_{k}", key(i)) for k, i in enumerate(output_indices)]
    source = f"TFLite main subgraph, signature '{name}'" if name else "TFLite main subgraph"
    return TFLiteGraph(interpreter, ops, tensors, specs, [key(i) for i in input_indices],
                       input_indices, outputs, output_indices, source, batch, raw_quantized, name,
                       frozenset(batched))


def _batched(interpreter, input_indices, scratch):
    """The scratch tensors whose first axis is the batch: those whose first dimension is the
    inputs' number of rows both as allocated and when allocated for one row more, the rest of
    their shape unchanged. The interpreter is allocated back as it was. A file with a fixed
    batch is resized beyond it for this (not strictly); when it cannot be, none is."""
    def shapes():
        return {d["index"]: (d["name"], [int(s) for s in d["shape"]]) for d in interpreter.get_tensor_details()}

    before, after = shapes(), {}
    allocated = {i: before[i][1] for i in input_indices}
    rows = {shape[0] for shape in allocated.values() if shape}
    if len(rows) != 1:
        return set()
    rows = rows.pop()
    try:
        for i, shape in allocated.items():
            interpreter.resize_tensor_input(i, [rows + 1, *shape[1:]], strict=False)
        interpreter.allocate_tensors()
        after = shapes()
    except (RuntimeError, ValueError):  # a fixed-batch model whose reshapes cannot take another batch
        pass
    finally:
        for i, shape in allocated.items():
            interpreter.resize_tensor_input(i, shape, strict=False)
        interpreter.allocate_tensors()
    found = set()
    for i in scratch:
        name, shape = before[i]
        grown = after.get(i, (None, []))
        if grown[0] == name and shape and shape[0] == rows and grown[1] == [rows + 1, *shape[1:]]:
            found.add(i)
    return found


def _producers(path, ops, details):
    """{tensor index: the op that makes it}. The interpreter runs the ops in the file's order
    and checks none of it: a ModelLoadError when an op reads a tensor that it or a later op
    makes (a cyclic graph, or ops out of order: the tensor would be read before it is
    computed), or when two ops make one tensor."""
    def named(index):
        name = details[index]["name"] if index in details else ""
        return f"#{index} ('{name}')" if name else f"#{index}"

    producer = {}
    for op in ops:
        for i in op.outputs:
            if i in producer:
                raise ModelLoadError(f"{path}: tensor {named(i)} is made by two ops (op {producer[i].index} "
                                     f"{producer[i].type} and op {op.index} {op.type}): not a valid TFLite graph")
            producer[i] = op
    for op in ops:
        for i in op.inputs:
            maker = producer.get(i)
            if maker is not None and maker.index >= op.index:
                which = "it makes itself" if maker is op else f"op {maker.index} ({maker.type}) makes after it"
                raise ModelLoadError(f"{path}: op {op.index} ({op.type}) reads tensor {named(i)}, which {which}: the "
                                     "graph is cyclic or its ops are out of order, so the tensor would be read "
                                     "before it is computed")
    return producer


def _signature_names(interpreter, name):
    """({tensor index: input key}, {tensor index: output key}) of signature `name`. Its
    SignatureRunner is dropped on return: while one lives, the interpreter refuses to resize."""
    runner = interpreter.get_signature_runner(name)
    return ({d["index"]: key for key, d in runner.get_input_details().items()},
            {d["index"]: key for key, d in runner.get_output_details().items()})


def _batch(path, inputs):
    """None when every input's batch axis is dynamic (-1 in its shape signature), else the
    fixed batch size they share."""
    sizes = set()
    for t in inputs:
        if not t.shape:
            raise ModelLoadError(f"{path}: input '{t.name}' is a scalar, with no batch axis to feed samples along")
        sizes.add(t.shape[0])
    if len(sizes) > 1:
        shown = ", ".join(f"{t.name} {shape_text(t.shape, '?')}" for t in inputs)
        raise ModelLoadError(f"{path}: the inputs disagree on the batch size ({shown})")
    return sizes.pop() if sizes else None

