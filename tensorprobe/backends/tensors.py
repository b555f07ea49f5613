"""Graph tensors as every format lists, selects and feeds them: TensorInfo and OpInfo records,
`tensorprobe tensors`' filter, `dump --tensor` / `--tensor-match` selection and naming, and
the check of an input batch against a tf.TensorSpec-like input (`.name`, `.shape.rank`,
`.shape.as_list()`, `.dtype.as_numpy_dtype`). Tensor names are `<op name>:<output index>`;
their HDF5 datasets are `/tensors/<tensor name>`, the name unchanged."""

import difflib
import re
from dataclasses import dataclass

from tensorprobe import errors
from tensorprobe.errors import InputError, UsageError
from tensorprobe.probe import Plan
from tensorprobe.store import DatasetSpec
from tensorprobe.text import did_you_mean, regex, shape_text

GROUP = "tensors"


@dataclass
class TensorInfo:
    name: str  # "StatefulPartitionedCall/model_1/dense_1/BiasAdd:0"
    op: str  # the op type: "BiasAdd"
    dtype: str
    shape: list | None  # static shape, None for an unknown dimension; None for unknown rank
    position: int  # in the topological order of the graph's tensors

    @property
    def op_name(self):
        return self.name.rpartition(":")[0]

    @property
    def number(self):
        """What the `#` column of `tensorprobe tensors` shows."""
        return self.position

    @property
    def origin(self):
        """What an extraction function takes to compute this tensor."""
        return self.name

    @property
    def dataset_name(self):
        """Its dataset's path under /tensors."""
        return self.name

    def attributes(self):
        """The attributes of its dataset under /tensors."""
        return {"tensor": self.name, "op_type": self.op}

    def extra_cells(self):
        """Columns a format adds to `tensorprobe tensors`: {header: text}."""
        return {}

    @property
    def layer_attributes(self):
        """The attributes a format adds to a layer's dataset of this tensor (TFLite's)."""
        return {}

    def to_json(self):
        return {"name": self.name, "op": self.op, "dtype": self.dtype, "shape": self.shape}


@dataclass
class OpInfo:
    name: str
    type: str
    inputs: list  # names of the tensors it reads (data inputs, not control dependencies)
    outputs: list  # names of the tensors it produces
    loop_depth: int = 0  # how many (lowered) while loops it runs inside


def filter_tensors(graph, pattern=None, op_types=()):
    """The tensors whose name matches `pattern` (re.search) and whose op type is one of
    `op_types` (case-insensitive; all when empty). An op type the graph does not hold is a
    usage error with suggestions."""
    known = {t.lower(): t for t in graph.op_types()}
    wanted = set()
    for op_type in op_types:
        if op_type.lower() not in known:
            close = [known[c] for c in difflib.get_close_matches(op_type.lower(), list(known), n=3, cutoff=0.6)]
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"{errors.name('op')} '{op_type}': no op of this type in the graph{hint}",
                             argument="op")
        wanted.add(op_type.lower())
    return [
        t for t in graph.tensors
        if (not wanted or t.op.lower() in wanted) and (pattern is None or pattern.search(t.name))
    ]


def select(graph, names=(), match=None):
    """The tensors chosen by --tensor NAME... and --tensor-match REGEX, in topological order.

    A NAME is a tensor name (`.../Relu:0`), an op name with one output (`.../Relu`), or a
    unique suffix of either after a '/'. Named tensors must depend on the inputs and have a
    batch axis; --tensor-match keeps the matching tensors that do and skips the others.
    """
    chosen = {}
    for name in names:
        info = resolve(graph, name)
        if info.origin in chosen:
            raise UsageError(f"{errors.name('tensors')} '{name}' selects '{info.name}', which is already selected",
                             argument="tensors")
        problem = graph.why_not_dumpable(info)
        if problem:
            which = f" ({info.name})" if info.name and name != info.name else ""
            raise UsageError(f"{errors.name('tensors')} '{name}'{which}: {problem}", argument="tensors")
        chosen[info.origin] = info
    if match is not None:
        pattern = regex(match, "tensor_match")
        found = [t for t in graph.tensors if pattern.search(t.name)]
        if not found:
            raise UsageError(f"{errors.name('tensor_match')} '{match}' matches no tensor name",
                             argument="tensor_match")
        usable = [t for t in found if not graph.why_not_dumpable(t)]
        if not usable:
            raise UsageError(
                f"{errors.name('tensor_match')} '{match}' matches {len(found)} tensors, none of which depends on "
                "the inputs with a batch axis", argument="tensor_match"
            )
        chosen.update((t.origin, t) for t in usable)
    return sorted(chosen.values(), key=lambda t: t.position)


def resolve(graph, name):
    """The TensorInfo that NAME means (see `select`)."""
    by_name = graph.by_name
    if name in by_name:
        return by_name[name]
    single = _op_output(graph, name)
    if single is not None:
        return single
    candidates = {t.name for t in graph.tensors if t.name.endswith("/" + name)}
    candidates |= {t.name for t in graph.tensors if t.op_name.endswith("/" + name) and _op_output(graph, t.op_name)}
    bearers = [t for t in graph.tensors if t.name == name]
    if len(bearers) > 1:  # a TFLite interpreter's scratch tensors: unnamed, or one name for several
        listed = ", ".join(f"#{t.number}" for t in bearers[:5]) + (", ..." if len(bearers) > 5 else "")
        raise UsageError(f"{errors.name('tensors')} '{name}' is ambiguous: {len(bearers)} tensors bear this "
                         f"name ({listed}); give one's number, '#N'", argument="tensors")
    if len(candidates) == 1:
        full = candidates.pop()
        return by_name[full] if full in by_name else resolve(graph, full)  # a name several bear: ambiguous
    if candidates:
        listed = ", ".join(sorted(candidates)[:5]) + (", ..." if len(candidates) > 5 else "")
        raise UsageError(f"{errors.name('tensors')} '{name}' is ambiguous: it names {listed}; give the full name",
                         argument="tensors")
    raise UsageError(
        f"{errors.name('tensors')} '{name}': no such tensor{did_you_mean(name, [t.name for t in graph.tensors])} "
        "(`tensorprobe tensors MODEL` lists them)", argument="tensors"
    )


def _op_output(graph, op_name):
    """The tensor of op `op_name` when the op has exactly one output; else None (an op with
    several outputs is an error: the user must say which)."""
    outputs = [t for t in (graph.by_name.get(f"{op_name}:{i}") for i in range(2)) if t is not None]
    if not outputs:
        return None
    if len(outputs) > 1:
        raise UsageError(f"{errors.name('tensors')} '{op_name}': the op has several outputs; name one "
                         f"({op_name}:0, {op_name}:1, ...)", argument="tensors")
    return outputs[0]


def plan(graph, selected, layer_of=None, start=0):
    """One DatasetSpec per selected tensor, at `tensors/<tensor name>`. `layer_of(name)`
    gives the layer path a tensor's name scope belongs to ("" when none); `start` is the
    `order` of the first one (after any layer datasets)."""
    specs = []
    for i, info in enumerate(selected):
        if any(part in (".", "..") for part in info.dataset_name.split("/")):
            raise UsageError(f"{errors.name('tensors')} '{info.name}': a name component '.' or '..' cannot be an "
                             "HDF5 path", argument="tensors")
        layer = layer_of(info.name) if layer_of is not None else ""
        extra = {**info.attributes(), "order": start + i}
        specs.append(DatasetSpec(info.dataset_name, layer or "", "", extra, GROUP))
    return Plan(specs, [info.origin for info in selected])


def checked(spec, array):
    """`array` as input `spec` takes it, or an InputError naming the input."""
    import numpy as np

    shape = spec.shape
    if shape.rank is not None and (
        array.ndim != shape.rank
        or any(d is not None and d != s for d, s in zip(shape.as_list(), array.shape))
    ):
        raise InputError(
            f"input '{spec.name}': array of shape {tuple(array.shape)} does not fit "
            f"{shape_text(shape.as_list(), '?')}"
        )
    dtype = np.dtype(spec.dtype.as_numpy_dtype)
    if array.dtype != dtype:
        if array.dtype.kind not in "biuf" or (dtype.kind != "f" and not np.can_cast(array.dtype, dtype, "safe")):
            raise InputError(f"input '{spec.name}': dtype {array.dtype} cannot be fed as {dtype}")
        array = array.astype(dtype)
    return array


def inputs_text(specs):
    return ", ".join(f"{s.name} {shape_text(s.shape.as_list(), '?')} {s.dtype.name}" for s in specs)


def input_name(name, i):
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0])
    return name if re.match(r"[A-Za-z0-9.]", name) else f"input_{i}"
