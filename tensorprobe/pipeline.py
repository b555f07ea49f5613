"""The pipeline behind `dump`, `activations` and `compare`, for the API and the CLI alike:

    backend (backends/detect.py) -> selection (probe.py) -> input feed (inputs/) ->
    the backend's runner -> sink (store.DumpWriter, store.MemorySink, a comparison)

run through one read / compute / write loop (runner.py), so every option of the inputs
(--skip-bad among them) means the same in every command. Every format is reached through
the Backend interface (backends/base.py) only.
"""

import contextlib
import os
from dataclasses import dataclass, field

from tensorprobe import errors


def open_backend(model, options=None):
    """A base.Backend from a path, an in-memory model a backend takes (a keras.Model), or
    a Backend (returned as it is). `options`: a detect.OpenOptions."""
    from tensorprobe.backends import base, detect

    if isinstance(model, base.Backend):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise errors.UsageError(f"model '{path}': no such file or folder")
        return detect.open_model(path, options)
    backend = detect.open_object(model)
    if backend is None:
        raise errors.UsageError(f"model: expected a path or a keras.Model, not {type(model).__name__}")
    return backend


def tensors(backend, pattern=None, op_types=()):
    """(the tensor graph, its tensors whose name `pattern` searches and whose op type is one of
    `op_types`): what `tensorprobe tensors` lists."""
    from tensorprobe.backends.tensors import filter_tensors

    graph = backend.tensor_graph
    return graph, filter_tensors(graph, pattern, op_types)


# ---- what to compute -----------------------------------------------------------------------

@dataclass
class Selection:
    """What a job computes: layers (names, a regex, all), graph tensors, gradients."""

    layers: tuple = ()
    match: str | None = None
    all_layers: bool = False
    tensors: tuple = ()
    tensor_match: str | None = None
    gradients: str | None = None  # the target: "top", "class:K", "sum", "loss:NAME"
    target_output: str | None = None
    labels: object = None  # a .npy path or an array, for loss:NAME
    training: bool = False
    jit: bool = False
    max_live_bytes: int | None = None  # ONNX: the tensors one session returns for a batch, at most (bytes)

    @property
    def wants_layers(self):
        return bool(self.layers or self.match or self.all_layers)

    @property
    def wants_tensors(self):
        return bool(self.tensors or self.tensor_match)

    def check(self, skip_bad):
        """Every check that needs no model, so that a wrong option fails at once, before
        TensorFlow loads the model (seconds)."""
        from tensorprobe.text import regex

        if not (self.wants_layers or self.wants_tensors):
            raise errors.UsageError(
                f"nothing selected: give {errors.name('layers')} NAME, {errors.name('match')} REGEX, "
                f"{errors.name('all_layers')}, {errors.name('tensors')} NAME or {errors.name('tensor_match')} REGEX")
        regex(self.match, "match")
        regex(self.tensor_match, "tensor_match")
        if self.max_live_bytes is not None and (isinstance(self.max_live_bytes, bool) or
                                                not isinstance(self.max_live_bytes, int) or self.max_live_bytes < 1):
            raise errors.UsageError(f"{errors.name('max_live_bytes')} {self.max_live_bytes!r}: expected a size of at "
                                    "least 1 byte", argument="max_live_bytes")
        if self.gradients is None:
            if self.labels is not None or self.target_output is not None:
                raise errors.UsageError(
                    f"{errors.name('labels')} and {errors.name('target_output')} go with {errors.name('gradients')}",
                    argument="labels" if self.labels is not None else "target_output")
            return
        if self.wants_tensors:
            raise errors.UsageError(
                f"{errors.name('gradients')} works with {errors.name('layers')}, {errors.name('match')} and "
                f"{errors.name('all_layers')}, not with {errors.name('tensors')}", argument="gradients")
        from tensorprobe.probe import parse_target, target_option

        target = parse_target(self.gradients)
        if (target.kind == "loss") != (self.labels is not None):
            raise errors.UsageError(f"{target_option()} loss:NAME and {errors.name('labels')} go together",
                                    argument="labels")
        if self.labels is not None and skip_bad:
            raise errors.UsageError(f"{errors.name('labels')} cannot be combined with {errors.name('skip_bad')}: "
                                    "the rows would no longer match", argument="labels")

    def options(self):
        """The selection as the options fingerprint records it."""
        gradients = None
        if self.gradients is not None:
            labels = self.labels if self.labels is None or isinstance(self.labels, (str, os.PathLike)) \
                else "<array>"
            gradients = (self.gradients, None if labels is None else os.fspath(labels), self.target_output)
        return {"layers": tuple(self.layers), "match": self.match, "all": self.all_layers,
                "tensors": tuple(self.tensors), "tensor_match": self.tensor_match,
                "training": self.training, "jit": self.jit, "gradients": gradients}


@dataclass
class Extraction:
    plan: object  # probe.Plan: the datasets, in order
    extract: object  # (input batches, labels) -> one array per dataset
    labels: object  # the label rows (all input rows), or None
    estimate: object  # (rows, batch_rows) -> bytes, for the size check; None when unknown


def extraction(backend, selection, storage, feed, counts=False):
    """The plan of datasets and the function that computes them, from the backend; with
    `counts`, each value's non-finite counts per sample instead (RunRequest.counts)."""
    from tensorprobe import probe
    from tensorprobe.backends.base import RunRequest

    plan = extract = labels = estimate = None
    # a graph's values are stored as computed, a Keras model's come together: refused first
    backend.check(RunRequest(storage, max_live_bytes=selection.max_live_bytes))
    if selection.wants_tensors and (storage.dtype or storage.reduce):
        # graph tensors are stored as computed: say so rather than record options not applied
        option = "dtype" if storage.dtype else "reduce"
        raise errors.UsageError(f"{errors.name(option)} applies to the layers of a Keras model; "
                                f"{errors.name('tensors')} selects graph tensors, stored as computed",
                                argument=option)
    if selection.wants_layers:
        graph = backend.layer_graph
        plan = probe.plan(graph, probe.select(graph, selection.layers, selection.match, selection.all_layers))
        request = RunRequest(storage, selection.training, selection.jit, counts=counts,
                             max_live_bytes=selection.max_live_bytes)
        if selection.gradients is not None:
            request.target = probe.parse_target(selection.gradients)
            request.target_output = selection.target_output
            labels = _labels(selection.labels, feed.total_rows)
            if labels is not None and feed.row_range != (0, feed.total_rows):
                labels = labels[slice(*feed.row_range)]
            request.label_shape = labels.shape[1:] if labels is not None else None
        plan, extract = backend.runner(plan, request)
        estimate = backend.estimate(plan, storage)
    if selection.wants_tensors:
        start = len(plan.specs) if plan is not None else 0
        tensor_plan, run_tensors = backend.tensor_runner(selection.tensors, selection.tensor_match, start,
                                                         selection.max_live_bytes)
        if plan is None:
            plan, extract = tensor_plan, run_tensors
        else:
            plan, extract = _joined(plan, extract, tensor_plan, run_tensors)
        estimate = None  # graph tensors' shapes are known once they run
    return Extraction(plan, extract, labels, estimate)


def _joined(layer_plan, run_layers, tensor_plan, run_tensors):
    """One plan and one function: the layers' datasets, then the tensors'."""
    from tensorprobe.probe import Plan

    def run(batch, labels=None):
        return run_layers(batch, labels) + run_tensors(batch)

    return Plan(layer_plan.specs + tensor_plan.specs, layer_plan.origins + tensor_plan.origins), run


def _labels(labels, rows):
    import numpy as np

    from tensorprobe.inputs import open_labels

    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return open_labels(os.fspath(labels), rows)
    labels = np.asarray(labels)
    if labels.ndim == 0 or len(labels) != rows or labels.dtype.kind not in "biuf":
        raise errors.InputError(f"{errors.name('labels')}: {len(labels) if labels.ndim else 0} numeric rows for "
                                f"{rows} input samples", argument="labels")
    return labels


# ---- inputs ----------------------------------------------------------------------------------

def feed(backend, x, named, prep, layers=True, stdin=None):
    """The checked input feed for `x`: an array, a list of arrays (one per input, in the
    model's order), a dict {input name: array or path}, a list of str for a model whose one
    input takes strings, or paths as `dump` takes them; `named`: [(input name, path)] as
    --input NAME=PATH gives them. `layers`: the inputs of the layers (else the tensor graph's)."""
    import numpy as np

    from tensorprobe.inputs import feed as feeding
    from tensorprobe.inputs import lines, preprocess

    specs = backend.input_specs(layers)
    if isinstance(x, lines.StrList) and len(specs) == 1 and specs[0].text:
        x = np.array(x, dtype=object)  # text samples, not paths (give those as pathlib.Path)
    positional, by_name = _sources(x, named, specs)
    function = preprocess.lookup(prep.preprocess) if prep.preprocess else None
    return feeding.open_feed(specs, positional, by_name, prep, stdin, function)


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def _sources(x, named, specs):
    from tensorprobe.inputs import sources
    from tensorprobe.inputs.spec import describe_all

    if x is None or _is_path(x) or (isinstance(x, (list, tuple)) and all(_is_path(p) for p in x)):
        paths = [] if x is None else [x] if _is_path(x) else list(x)
        return sources.gather([os.fspath(p) for p in paths], named)
    if isinstance(x, (list, tuple)) and len(specs) == 1 and len(x) == 1 and hasattr(x[0], "shape"):
        x = x[0]  # [array] for a model with one input, as Keras takes it
    if isinstance(x, (list, tuple)) and len(specs) > 1:  # one array per input, as Keras takes them
        if len(x) != len(specs) or any(_is_path(p) for p in x):
            raise errors.UsageError(f"x: a list of {len(x)} items for the model's {len(specs)} inputs "
                                    f"({describe_all(specs)}): give one array per input, in that order, "
                                    "or a dict {input name: array or path}")
        x = {s.name: value for s, value in zip(specs, x)}
    if isinstance(x, dict):
        found = []
        for name, value in x.items():
            if _is_path(value):
                found.append((name, sources.expand([os.fspath(value)], f"x['{name}']")))
            else:
                found.append((name, [sources.in_memory(value, f"<{name}>")]))
        return [], found
    if len(specs) > 1:
        raise errors.UsageError(f"x: the model has {len(specs)} inputs ({describe_all(specs)}): give a list "
                                "of arrays in that order, or a dict {input name: array or path}")
    return [sources.in_memory(x, "<array>")], []


def arrays_of(x):
    """The arrays in memory among `x` (the Python API's), for the input contents fingerprint."""
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else [x]
    return [v for v in values if v is not None and not _is_path(v)]


# ---- dumping ---------------------------------------------------------------------------------

@dataclass
class DumpResult:
    """What a dump did: its summary (`summary --json`), the inputs skipped as bad, the
    datasets holding NaN or Inf, and whether --resume found it already done."""

    summary: dict
    skipped: list = field(default_factory=list)
    nonfinite: list = field(default_factory=list)
    resumed: bool = False


@dataclass
class Job:
    """How a job runs: rows per batch, a progress bar (`progress(total)`: a context manager
    yielding `advance(n)`), the stdin stream for `-`."""

    batch_size: int = 32
    progress: object = None
    stdin: object = None

    def check(self):
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise errors.UsageError(f"{errors.name('batch_size')} {self.batch_size!r}: expected an integer >= 1",
                                    argument="batch_size")

    def bar(self, total):
        return self.progress(total) if self.progress is not None else contextlib.nullcontext()


def run_activations(model, x, selection, prep, job):
    """{dataset name: array}: the activations of `x` computed in memory."""
    from tensorprobe import runner
    from tensorprobe.probe import Storage
    from tensorprobe.store import MemorySink

    selection.check(prep.skip_bad)
    backend = open_backend(model)
    source = feed(backend, x, (), prep, selection.wants_layers, job.stdin)
    work = extraction(backend, selection, Storage(), source)
    sink = MemorySink(work.plan.specs, rows=source.rows)
    with job.bar(source.rows) as advance:
        runner.dump(work.extract, source.batches(job.batch_size), sink, advance, work.labels)
    return sink.finish()


def run_dump(model, x, named, output, selection, prep, storage, job, *, overwrite=False, shard=None,
             resume=False, max_bytes=None, attrs=None, on_size=None):
    """The dump: returns a DumpResult. `attrs`: root attributes to add (the CLI's `command`).
    `on_size(bytes, free)`: told the estimated size before the work starts."""
    from tensorprobe import runner, store
    from tensorprobe import shard as sharding
    from tensorprobe.text import parse_size

    selection.check(prep.skip_bad)
    if isinstance(shard, str):
        shard = sharding.parse(shard)
    output = os.fspath(output)
    if not (resume and os.path.exists(output)):
        store.check_output(output, overwrite)
    limit = parse_size(max_bytes) if isinstance(max_bytes, str) else max_bytes
    backend = open_backend(model)
    source = feed(backend, x, named, prep, selection.wants_layers, job.stdin)
    options = {**selection.options(), "model_sha256": backend.sha256, "dtype": storage.dtype,
               "reduce": storage.reduce, **backend.fingerprint(),
               "prepare": prep.attrs(), "size": prep.size, "skip_bad": prep.skip_bad}
    identity, source_bytes = _job_attrs(source, shard, options, arrays_of(x))
    if resume and os.path.exists(output) and _resumed(output, identity, overwrite):
        return DumpResult(store.read_summary(output), resumed=True)
    work = extraction(backend, selection, storage, source)
    if work.estimate is not None:
        needed = work.estimate(source.rows, job.batch_size)
        if needed is not None:
            needed += store.dump_bytes([], source.rows, job.batch_size, source_bytes)
            free = store.check_room(output, needed, limit)
            if on_size is not None:
                on_size(needed, free)
    root = {**root_attrs(backend, prep), **(attrs or {}), **identity, "training": selection.training,
            "reduce": storage.reduce or "none", "dtype": storage.dtype or "as computed",
            "compression": compression_text(storage)}
    with store.DumpWriter(output, work.plan.specs, root, overwrite, storage.compression,
                          rows=source.rows, max_bytes=limit, source_bytes=source_bytes,
                          batch_rows=job.batch_size) as writer:
        with job.bar(source.rows) as advance:
            skipped = runner.dump(work.extract, source.batches(job.batch_size), writer, advance, work.labels)
        writer.finish()
    return DumpResult(store.read_summary(output), skipped, writer.nonfinite())


def _job_attrs(source, shard, options, arrays=()):
    """The root attributes that tie a dump to its inputs and options (and, for a shard, its
    rows), and the UTF-8 bytes its /inputs/source will hold; selects the shard's rows of
    `source`. `input_contents` fingerprints what the files of the dump's own rows hold (and
    `arrays`, the arrays in memory): see shard.contents_fingerprint."""
    from tensorprobe import shard as sharding

    identity = {"total_rows": source.rows, "input_fingerprint": source.fingerprint(),
                "options_fingerprint": sharding.options_fingerprint(options)}
    if shard is not None:
        rows = shard.rows(source.rows)
        identity = {"shard": str(shard), "shard_rows": list(rows), **identity}
        source.select(*rows)
    files, source_bytes = _row_files(source)
    identity[sharding.CONTENTS] = sharding.contents_fingerprint(files, arrays)
    return identity, source_bytes


def _row_files(source):
    """The files of the rows `source` feeds, in order, and an upper bound of the UTF-8 bytes of
    their /inputs/source entries (`name=file; ...` where inputs come from different files)."""
    from tensorprobe import shard as sharding

    streams = source.streams
    joined = 0 if len(streams) == 1 else sum(len(s.spec.name.encode()) + 3 for s in streams)
    files, size = {}, 0
    for labels in zip(*(stream.all_sources() for stream in streams)):
        size += joined
        for label in labels:
            size += len(label.encode("utf-8", "surrogateescape"))
            files[sharding.source_file(label)] = None
    return list(files), size


def _resumed(output, identity, overwrite):
    """With `resume` and an existing output: True when it is this job's complete output (the
    work is skipped); False to redo it with `overwrite`; otherwise refused."""
    from tensorprobe import store

    what = "shard" if "shard" in identity else "dump"
    if store.is_output_of(output, identity):
        return True
    if not overwrite:
        raise errors.OutputExistsError(f"{errors.name('output')} '{output}' exists and is not this {what}'s "
                                       "complete output (other inputs, input contents, options or shard); pass "
                                       f"{errors.name('overwrite')} to replace it", argument="output")
    store.check_output(output, overwrite)
    return False


def root_attrs(backend, prep):
    """The root attributes of a dump: the inputs' preparation, the model's provenance."""
    from datetime import datetime, timezone

    from tensorprobe.version import __version__

    return {
        **prep.attrs(),
        "tensorprobe_version": __version__,
        **backend.provenance(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", "tensorprobe.dump"],
    }


def compression_text(storage):
    name, level = storage.compression
    return "none" if name is None else name if level is None else f"{name}:{level}"


# ---- comparing two models --------------------------------------------------------------------

def run_compare(model_a, model_b, x, named, prep, job, *, layers=(), match=None, pairs=(), criterion=None,
                save_a=None, save_b=None, overwrite=False):
    """Both models on the same inputs, their paired layers compared batch by batch through
    the dump's loop (so --skip-bad passes over the same bad files): the dict of
    modelcompare.py. `criterion`: a modelcompare.Criterion, or None for the default by the
    models' precisions. `save_a`/`save_b`: also write each model's outputs to a dump."""
    from tensorprobe import modelcompare as comparing
    from tensorprobe import probe, runner, store
    from tensorprobe.backends.base import RunRequest
    from tensorprobe.probe import Storage

    for path, argument in ((save_a, "save_a"), (save_b, "save_b")):
        if path is not None:
            store.check_output(os.fspath(path), overwrite, argument)
    a, b = open_backend(model_a), open_backend(model_b)
    precisions = {"a": a.precision(), "b": b.precision()}
    if criterion is None:
        criterion = comparing.default_criterion(precisions["a"], precisions["b"])
    inputs_a, inputs_b = (_input_records(m) for m in (a, b))
    order, inputs_note = comparing.input_order(inputs_a, inputs_b)
    paired, only_a, only_b = comparing.pairings(a.layer_graph, b.layer_graph, layers, match, pairs)
    plan_a = probe.plan(a.layer_graph, [a.layer_graph.entries[p] for p, _ in paired])
    plan_b = probe.plan(b.layer_graph, [b.layer_graph.entries[p] for _, p in paired])
    matched, unmatched_a, unmatched_b = comparing.matched_specs(plan_a, plan_b, paired)
    source = feed(a, x, named, prep, stdin=job.stdin)
    plan_a, run_a = a.runner(plan_a, RunRequest(Storage()))
    plan_b, run_b = b.runner(plan_b, RunRequest(Storage()))
    comparison = comparing.Comparison(matched, source.rows, criterion)
    count = len(plan_a.specs)

    def extract(arrays, labels):
        return run_a(arrays, None) + run_b([arrays[k] for k in order], None)

    with contextlib.ExitStack() as stack:
        writers = [_save_writer(stack, path, argument, backend, plan, prep, source.rows, overwrite)
                   for path, argument, backend, plan in ((save_a, "save_a", a, plan_a),
                                                         (save_b, "save_b", b, plan_b))]
        sink = comparing.ComparisonSink(comparison, count, writers)
        with job.bar(source.rows) as advance:
            skipped = runner.dump(extract, source.batches(job.batch_size), sink, advance)
        for writer in writers:
            if writer is not None:
                writer.finish()
    records = comparison.pairs()
    first = next((r["path"] for r in records if r["status"] != "ok"), None)
    for record, key in zip(records, b.node_keys(plan_b, [j for _, j, _ in matched])):
        record["node_b"] = key  # model B's tensor name (or layer path), for Model Explorer
    fused_in_b, fused_in_a = comparing.fused(b.layer_graph, only_a), comparing.fused(a.layer_graph, only_b)
    return {
        "a": a.path, "b": b.path, "samples": sink.rows,
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "metric": str(criterion), "rtol": criterion.rtol, "atol": criterion.atol,
        **(criterion.tolerances.summary() if criterion.tolerances.custom else {}),
        "criterion": criterion.describe(), "precision": precisions,
        "inputs": [{"a": inputs_a[k]["name"], "b": spec["name"]} for k, spec in zip(order, inputs_b)],
        "inputs_by_position": inputs_note,
        "pairs": records, "first_divergence": first,
        "only_in_a": [p for p in only_a if p not in fused_in_b] + unmatched_a,
        "only_in_b": [p for p in only_b if p not in fused_in_a] + unmatched_b,
        "fused_in_a": fused_in_a, "fused_in_b": fused_in_b,
        "match": first is None,
    }


def _input_records(backend):
    return [{"name": s.name, "shape": [None, *s.shape], "dtype": s.dtype} for s in backend.input_specs()]


def _save_writer(stack, path, argument, backend, plan, prep, rows, overwrite):
    from tensorprobe import store

    if path is None:
        return None
    attrs = {**root_attrs(backend, prep), "total_rows": rows, "training": False, "reduce": "none",
             "dtype": "as computed", "compression": "none"}
    return stack.enter_context(store.DumpWriter(os.fspath(path), plan.specs, attrs, overwrite, rows=rows,
                                                argument=argument))
