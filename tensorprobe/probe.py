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
    origins: list  # where each value comes from in the graph (see graph.py), same order


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
    raise UnknownLayerError(
        f"--layer '{name}': no such layer{_did_you_mean(name, entries)} "
        "(`tensorprobe layers MODEL` lists them)"
    )


def _did_you_mean(name, entries):
    """'; did you mean ...?' with the up to three paths whose path or own name is closest."""
    def score(path):
        leaf = entries[path].name
        return max(difflib.SequenceMatcher(None, name, s).ratio() for s in (path, leaf))

    scored = sorted(((score(p), p) for p in entries), key=lambda sp: -sp[0])
    close = [p for s, p in scored[:3] if s >= 0.6]
    return f"; did you mean {' or '.join(repr(p) for p in close)}?" if close else ""


def plan(graph, selected):
    """Name one dataset per output of every call of every selected layer.

    `<path>` for a layer called once with one output; `<path>/call_K` per call of a layer
    called several times (shared weights); `<path>/output_I` per output of a layer with
    several outputs. When a nested model and layers inside it are both selected, the nested
    model's own output goes to `<path>/__output__`, beside its layers' groups.
    """
    chosen = {e.path for e in selected}
    specs, origins = [], []
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
            for i, (_, origin) in enumerate(outputs):
                name = f"{call_base}/output_{i}" if len(outputs) > 1 else call_base
                extra = {}
                if len(entry.calls) > 1:
                    extra["call"] = k
                if len(outputs) > 1:
                    extra["output"] = i
                specs.append(DatasetSpec(name, entry.path, entry.class_name, extra))
                origins.append(origin)
    return Plan(specs, origins)


def _inside(path, container):
    return path.startswith(container + "/")


def extraction_function(graph, plan):
    """A compiled function: list of input batches -> list of arrays, one per plan spec.

    It calls only the layers the selected outputs depend on, with the model's own weights,
    in inference mode. The batch axis is left open in its signature, so a last, smaller
    batch runs the same compiled graph.
    """
    import tensorflow as tf

    needed = graph.needed(plan.origins)
    signature = [
        tf.TensorSpec(shape=tuple(t.shape), dtype=_dtype_name(t.dtype), name=f"input_{i}")
        for i, t in enumerate(graph.inputs)
    ]

    @tf.function(input_signature=signature)
    def extract(*inputs):
        return graph.evaluate(list(inputs), plan.origins, needed)

    def run(batch):
        return [t.numpy() for t in extract(*batch)]

    return run


def _dtype_name(dtype):
    return getattr(dtype, "name", None) or str(dtype)
