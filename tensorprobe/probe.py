"""What to extract: layer names, indexes and regexes -> a plan of datasets, for any backend;
gradient targets and storage options. The backend's runner computes the plan
(backends/base.py)."""

import re
from dataclasses import dataclass

from tensorprobe import errors
from tensorprobe.errors import UnknownLayerError, UsageError
from tensorprobe.store import DatasetSpec
from tensorprobe.text import did_you_mean, regex

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
            raise UsageError(f"{errors.name('layers')} '{name}' selects '{path}', which is already selected",
                             argument="layers")
        chosen.add(path)
    # --match and --all leave out layers that never run (a Dropout inside MultiHeadAttention
    # at inference): they have no output; --layer naming one says so
    if match is not None:
        pattern = regex(match, "match")
        found = {p for p, e in entries.items() if pattern.search(p) and e.calls}
        if not found:
            raise UnknownLayerError(f"{errors.name('match')} '{match}' matches no layer path that has an output",
                                    argument="match")
        chosen |= found
    if all_layers:
        chosen |= {p for p, e in entries.items() if e.class_name != "InputLayer" and e.calls}
    if not chosen:
        raise UsageError(f"no layer selected: give {errors.name('layers')} NAME, {errors.name('match')} REGEX or "
                         f"{errors.name('all_layers')}")
    return [entries[p] for p in entries if p in chosen]


def resolve(graph, name, argument="layers"):
    """The path of the one layer that NAME means: a path, a unique name or path suffix, or an
    index as `tensorprobe layers` shows it ("3", "1.3"). `argument`: what gave the name (an
    API argument, or an option spelled out: `--zero`), as messages call it."""
    entries = graph.entries
    if name in entries:
        return name
    if re.fullmatch(r"\d+(\.\d+)*", name):
        for path, entry in entries.items():
            if entry.index == name:
                return path
        raise UnknownLayerError(f"{errors.name(argument)} '{name}': no layer has index {name}", argument=argument)
    candidates = [p for p in entries if p.endswith("/" + name)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UnknownLayerError(
            f"{errors.name(argument)} '{name}' is ambiguous: it names {', '.join(candidates)}; give the full path",
            argument=argument)
    raise UnknownLayerError(
        f"{errors.name(argument)} '{name}': no such layer{did_you_mean(name, list(entries))} "
        "(`tensorprobe layers MODEL` lists them)", argument=argument)


def plan(graph, selected):
    """Name one dataset per output of every call of every selected layer.

    `<path>` for a layer called once with one output; `<path>/call_K` per call of a layer
    called several times (shared weights); `<path>/output_I` per output of a layer with
    several outputs, or `<path>/<key>` for a layer that returns a dict. When a nested model and layers inside it are both selected, the nested
    model's own output goes to `<path>/__output__`, beside its layers' groups.
    """
    chosen = {e.path for e in selected}
    specs, origins = [], []
    batch_open = all(len(t.shape) and t.shape[0] is None for t in graph.inputs)
    for entry in selected:
        if not entry.calls:
            if entry.fused_into:  # a TFLite layer merged into another's op
                raise UsageError(f"{errors.name('layers')} '{entry.path}' has no tensor of its own: the converter "
                                 f"fused it into the op of '{entry.fused_into}' (dump that layer)",
                                 argument="layers")
            if entry.no_output:  # a Keras layer run only inside a loop
                raise UsageError(f"{errors.name('layers')} '{entry.path}' has no output: {entry.no_output}",
                                 argument="layers")
            raise UsageError(
                f"{errors.name('layers')} '{entry.path}' is never called in the model's graph, so it has no output",
                argument="layers")
        base = entry.path
        if any(_inside(p, entry.path) for p in chosen):
            base = f"{base}/{CONTAINER_OUTPUT}"
        for k, outputs in enumerate(entry.calls):
            call_base = f"{base}/call_{k}" if len(entry.calls) > 1 else base
            for i, (symbolic, origin) in enumerate(outputs):
                if entry.output_names is not None:  # a dict: its keys name the datasets
                    name = f"{call_base}/{entry.output_names[i]}"
                else:
                    name = f"{call_base}/output_{i}" if len(outputs) > 1 else call_base
                extra = {"order": len(specs)}  # model order; HDF5 lists names sorted
                # a TFLite tensor: its name, index and quantization, as on its /tensors dataset
                extra.update(entry.dataset_attributes(symbolic))
                if len(entry.calls) > 1:
                    extra["call"] = k
                if len(outputs) > 1:
                    extra["output"] = i
                shape = symbolic.shape
                if batch_open and shape is not None and len(shape) and shape[0] == 1:
                    # a value the same for every sample (a position embedding: (1, N, D) while
                    # the batch is open): stored once per sample, as every dataset is
                    extra[SAME_FOR_EVERY_SAMPLE] = True
                specs.append(DatasetSpec(name, entry.path, entry.class_name, extra))
                origins.append(origin)
    return Plan(specs, origins)


def _inside(path, container):
    return path.startswith(container + "/")


@dataclass
class Target:
    """What --gradients differentiates, per sample: `class:K`, `top`, `sum` or `loss:NAME`."""

    kind: str
    value: object = None  # the class index, or the loss name

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


def target_option():
    """How messages name the gradient target: the CLI's --target, the API's `gradients` (which
    takes the target itself)."""
    return errors.words("--target", "gradients")


def parse_target(text):
    kind, _, value = text.partition(":")
    if kind in ("top", "sum") and not value:
        return Target(kind)
    if kind == "class" and value.isdigit():
        return Target(kind, int(value))
    if kind == "loss" and value:
        return Target(kind, value)
    raise UsageError(f"{target_option()} '{text}': expected class:K, top, sum or loss:NAME", argument="gradients")


SAME_FOR_EVERY_SAMPLE = "same_for_every_sample"  # the attribute of such a dataset


def with_gradients(plan, target, output_name):
    """The plan plus one gradient dataset per activation, at the same path under /gradients;
    none for a value the same for every sample (its gradient is the batch's sum, not a
    sample's)."""
    extra = {"target": str(target), "target_output": output_name}
    grads = [DatasetSpec(s.name, s.layer, s.layer_class, {**s.extra, **extra}, "gradients")
             for s in plan.specs if not s.extra.get(SAME_FOR_EVERY_SAMPLE)]
    return Plan(plan.specs + grads, plan.origins)


@dataclass
class Storage:
    """How values are stored: --dtype (None keeps the computed dtype), --reduce (None, "mean"
    or "max" over the spatial axes), --compression (h5py's name and options)."""

    dtype: str | None = None
    reduce: str | None = None
    compression: tuple = (None, None)


def parse_compression(text):
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return (None, None)
    if name == "lzf" and not level:
        return ("lzf", None)
    if name == "gzip" and (not level or (level.isdigit() and 0 <= int(level) <= 9)):
        return ("gzip", int(level) if level else 4)
    raise UsageError(f"{errors.name('compression')} '{text}': expected gzip[:LEVEL 0-9], lzf or none",
                     argument="compression")
