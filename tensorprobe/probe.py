"""What to extract: layer names, indexes and regexes -> a plan of datasets -> the function
that computes exactly those tensors from the model's inputs."""

import difflib
import re
from dataclasses import dataclass

from tensorprobe.errors import UnknownLayerError, UsageError
from tensorprobe.store import DatasetSpec

CONTAINER_OUTPUT = "__output__"


@dataclass
class Plan:
    specs: list  # [DatasetSpec], one per extracted tensor
    tensors: list  # the symbolic tensors, in the same order


def select(graph, names=(), match=None, all_layers=False):
    """The LayerEntries chosen by --layer NAME..., --match REGEX and --all, in model order."""
    entries = graph.entries
    chosen = set()
    for name in names:
        path = resolve(graph, name)
        if path in chosen:
            raise UsageError(f"--layer '{name}' selects '{path}', which is already selected")
        chosen.add(path)
    if match is not None:
        try:
            pattern = re.compile(match)
        except re.error as e:
            raise UsageError(f"--match '{match}': not a valid regular expression ({e})") from e
        found = {p for p in entries if pattern.search(p)}
        if not found:
            raise UnknownLayerError(f"--match '{match}' matches no layer path")
        chosen |= found
    if all_layers:
        chosen |= {p for p, e in entries.items() if e.class_name != "InputLayer"}
    if not chosen:
        raise UsageError("no layer selected: give --layer NAME, --match REGEX or --all")
    return [entries[p] for p in entries if p in chosen]


def resolve(graph, name):
    """The path of the one layer that NAME means: a path, a unique name or path suffix, or an
    index as `tensorprobe layers` shows it ("3", "1.3")."""
    entries = graph.entries
    if name in entries:
        return name
    if re.fullmatch(r"\d+(\.\d+)*", name):
        for path, entry in entries.items():
            if entry.index == name:
                return path
        raise UnknownLayerError(f"--layer '{name}': no layer has index {name}")
    candidates = [p for p in entries if p.endswith("/" + name)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UnknownLayerError(
            f"--layer '{name}' is ambiguous: it names {', '.join(candidates)}; give the full path"
        )
    names = list(entries) + sorted({e.name for e in entries.values()})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownLayerError(
        f"--layer '{name}': no such layer{hint} (`tensorprobe layers MODEL` lists them)"
    )


def plan(graph, selected):
    """Name one dataset per output of every call of every selected layer.

    `<path>` for a layer called once with one output; `<path>/call_K` per call of a layer
    called several times (shared weights); `<path>/output_I` per output of a layer with
    several outputs. When a nested model and layers inside it are both selected, the nested
    model's own output goes to `<path>/__output__`, beside its layers' groups.
    """
    chosen = {e.path for e in selected}
    specs, tensors = [], []
    for entry in selected:
        if not entry.calls:
            raise UsageError(
                f"--layer '{entry.path}' is never called in the model's graph, so it has no output"
            )
        base = entry.path
        if any(_inside(p, entry.path) for p in chosen):
            base = f"{base}/{CONTAINER_OUTPUT}"
        for k, outputs in enumerate(entry.calls):
            call_base = f"{base}/call_{k}" if len(entry.calls) > 1 else base
            for i, tensor in enumerate(outputs):
                name = f"{call_base}/output_{i}" if len(outputs) > 1 else call_base
                extra = {}
                if len(entry.calls) > 1:
                    extra["call"] = k
                if len(outputs) > 1:
                    extra["output"] = i
                specs.append(DatasetSpec(name, entry.path, entry.class_name, extra))
                tensors.append(tensor)
    return Plan(specs, tensors)


def _inside(path, container):
    return path.startswith(container + "/")


def extraction_function(loaded, graph, plan):
    """A compiled function: list of input batches -> list of arrays, one per plan spec.

    It is a sub-model of the re-traced graph from the model's inputs to the selected tensors,
    so it computes only what they need, with the model's own weights, in inference mode.
    """
    import tensorflow as tf

    submodel = loaded.keras.Model(graph.inputs, plan.tensors)
    signature = [
        tf.TensorSpec(shape=tuple(t.shape), dtype=_dtype_name(t.dtype), name=f"input_{i}")
        for i, t in enumerate(graph.inputs)
    ]

    @tf.function(input_signature=signature)
    def extract(*inputs):
        outputs = submodel(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        return outputs if isinstance(outputs, (list, tuple)) else [outputs]

    def run(batch):
        return [t.numpy() for t in extract(*batch)]

    return run


def _dtype_name(dtype):
    return getattr(dtype, "name", None) or str(dtype)
