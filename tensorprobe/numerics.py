"""Where a model's values stop being finite: `nanhunt`, for any format through the Backend
interface.

One pass over the inputs, every layer selected (as `dump --all`), with the backend's runner
asked for non-finite counts instead of values (RunRequest.counts): a Keras model counts
inside its compiled function, so only three numbers per sample and layer leave it; a graph
(SavedModel, frozen graph, TFLite, ONNX) runs as it was saved, and each batch's values are
counted in NumPy as they come back (stats.counting), one batch in memory at a time. The model's
inputs are counted too: a layer is the culprit only for samples whose inputs were finite.

The report (`nanhunt --json`, `tensorprobe.nanhunt`):

    finite          everything finite: inputs, every layer, every gradient
    samples         the rows run
    inputs          one record per model input
    forward         {finite, first_nonfinite, culprit, layers: records in compute order}
    backward        None, or {target, finite, first_nonfinite, culprit, after, layers: records
                    in backward order (the last layer first)}

A record: name, layer, class, finite, nan, posinf, neginf (element counts over all samples),
nonfinite_samples (how many samples hold one), samples (the first SHOWN of them: row and
source), and for layers `inputs_finite` (the model's inputs were finite in every sample where
it is not), for gradients `forward_finite` (the whole forward pass was). The forward culprit
is the first layer, in compute order, with a non-finite value in a sample whose inputs are
finite: every layer before it is finite there. The backward culprit is the first layer, in
backward order, whose output's gradient is non-finite in a sample whose whole forward pass is
finite (a `sqrt` at 0, a `log` near 0 read by the layer after it); `after` names the gradient
before it in backward order, the last one still finite there.
"""

import os
from dataclasses import dataclass

import numpy as np

from tensorprobe import errors
from tensorprobe.stats import COUNTS, count_rows

SHOWN = 10  # samples listed per record


class Health:
    """The running counts of one value (a model input, a layer's output or its gradient)."""

    def __init__(self, name, layer="", layer_class="", group="activations"):
        self.name, self.layer, self.layer_class, self.group = name, layer, layer_class, group
        self.totals = np.zeros(3, np.int64)
        self.bad_samples = 0
        self.own_samples = 0  # bad where what it depends on was finite (see HealthSink)
        self.shown = []  # the first SHOWN bad samples: {"row", "source", counts}
        self.first_own = None  # the row of the first `own` sample

    def update(self, counts, start, sources, clean):
        """A batch's count rows from row `start`; `clean`: per row, whether what this value
        depends on was finite there."""
        self.totals += counts.sum(axis=0)
        bad = counts.any(axis=1)
        own = bad & clean
        self.bad_samples += int(bad.sum())
        self.own_samples += int(own.sum())
        if own.any() and self.first_own is None:
            self.first_own = start + int(np.argmax(own))
        for i in np.flatnonzero(bad)[: SHOWN - len(self.shown)]:
            self.shown.append({"row": start + int(i), "source": str(sources[i]),
                               **{k: int(v) for k, v in zip(COUNTS, counts[i])}})

    @property
    def finite(self):
        return self.bad_samples == 0

    def record(self, clean_key=None):
        """The report's record; a model input's has no layer or class."""
        where = {"layer": self.layer, "class": self.layer_class} if self.layer else {}
        record = {"name": self.name, **where, "finite": self.finite,
                  **{k: int(v) for k, v in zip(COUNTS, self.totals)},
                  "nonfinite_samples": self.bad_samples, "samples": list(self.shown)}
        if clean_key is not None:
            record[clean_key] = self.own_samples == self.bad_samples
        return record


class HealthSink:
    """runner.dump's sink for count rows: the model inputs' first, then one per plan spec.
    A layer's sample is its own (the culprit's) when the model inputs are finite there; a
    gradient's when the whole forward pass (inputs and every layer) is."""

    def __init__(self, input_names, specs):
        from tensorprobe.store import dataset_name, in_model_order

        self.inputs = [Health(name) for name in input_names]
        self.values = [Health(dataset_name(s.group, s.name), s.layer, s.layer_class, s.group) for s in specs]
        self.rows = 0
        # compute order, as `summary` lists a dump: a nested model's own output after its layers
        records = [{"group": s.group, "order": s.extra.get("order"), "layer": s.layer, "path": s.name, "i": i}
                   for i, s in enumerate(specs)]
        self.order = [r["i"] for r in in_model_order(records)]

    def append(self, sources, arrays):
        n = len(sources)
        counts = [np.asarray(a) for a in arrays]
        for health, c in zip(self.inputs + self.values, counts):
            if c.shape != (n, 3):
                raise errors.TensorprobeError(f"'{health.name}' gave counts of shape {c.shape} for a batch of {n}")
        inputs = counts[: len(self.inputs)]
        values = counts[len(self.inputs):]
        inputs_clean = ~np.any([c.any(axis=1) for c in inputs], axis=0) if inputs else np.ones(n, bool)
        forward = [c for c, h in zip(values, self.values) if h.group == "activations"]
        forward_clean = inputs_clean & ~np.any([c.any(axis=1) for c in forward], axis=0) if forward \
            else inputs_clean
        for health, c in zip(self.inputs, inputs):
            health.update(c, self.rows, sources, np.ones(n, bool))
        for health, c in zip(self.values, values):
            health.update(c, self.rows, sources, inputs_clean if health.group == "activations" else forward_clean)
        self.rows += n

    def skip(self, entries, rows):
        """Inputs passed over as bad (--skip-bad): the report lists them (`skipped`)."""

    def report(self, backward_target=None):
        ordered = [self.values[i] for i in self.order]
        forward = [h for h in ordered if h.group == "activations"]
        gradients = [h for h in ordered if h.group == "gradients"][::-1]  # backward order
        report = {
            "finite": all(h.finite for h in self.inputs + self.values),
            "samples": self.rows,
            "inputs": [h.record() for h in self.inputs],
            "forward": _section(forward, "inputs_finite"),
            "backward": None,
        }
        if backward_target is not None:
            section = _section(gradients, "forward_finite")
            culprit = next((i for i, h in enumerate(gradients) if h.own_samples), None)
            section["after"] = gradients[culprit - 1].name if culprit else None
            report["backward"] = {"target": backward_target, **section}
        return report


def _section(healths, clean_key):
    first = next((h.name for h in healths if not h.finite), None)
    culprit = next((h for h in healths if h.own_samples), None)
    return {"finite": first is None, "first_nonfinite": first,
            "culprit": culprit.name if culprit is not None else None,
            "culprit_first_sample": culprit.first_own if culprit is not None else None,
            "layers": [h.record(clean_key) for h in healths]}


@dataclass
class Backward:
    """What `--backward` differentiates: a target as `dump --target` takes it (`loss:NAME`
    with labels), from the model output `target_output`."""

    target: str
    labels: object = None
    target_output: str | None = None


def backward_target(target=None, loss=None, labels=None):
    """The gradient target of `--backward`: `--target`, or `loss:NAME` from --loss NAME (which
    needs --labels)."""
    if loss is not None and target is not None:
        raise errors.UsageError(f"{errors.name('loss')} NAME is {errors.name('target')} loss:NAME; give one of "
                                "them", argument="loss")
    if loss is not None:
        target = f"loss:{loss}"
    if target is None:
        target = "top" if labels is None else None
    if target is None:
        raise errors.UsageError(f"{errors.name('labels')} goes with {errors.name('loss')} NAME (or "
                                f"{errors.name('target')} loss:NAME)", argument="labels")
    return target


def run_nanhunt(model, x, named, prep, job, backward=None, training=False, jit=False):
    """The report (see the module's docstring) for the model `model` (a path, an in-memory
    model or a Backend) on the inputs `x`; `backward`: a Backward, or None for the forward
    pass only."""
    from tensorprobe import pipeline, runner
    from tensorprobe.backends.base import RunRequest
    from tensorprobe.probe import Storage, parse_target

    selection = pipeline.Selection(all_layers=True, training=training, jit=jit)
    if backward is not None:
        selection.gradients, selection.labels = backward.target, backward.labels
        selection.target_output = backward.target_output
    selection.check(prep.skip_bad)
    backend = pipeline.open_backend(model)
    if backward is not None:
        try:
            backend.check(RunRequest(target=parse_target(backward.target)))
        except errors.UsageError as e:
            if e.argument != "gradients":
                raise
            raise errors.UsageError(f"{errors.name('backward')} needs gradients, which only a Keras model gives; "
                                    f"{backend.path} holds only a {backend.kind}", argument="backward") from e
    source = pipeline.feed(backend, x, named, prep, True, job.stdin)
    work = pipeline.extraction(backend, selection, Storage(), source, counts=True)
    sink = HealthSink([spec.name for spec in backend.input_specs(True)], work.plan.specs)
    extract = work.extract

    def inputs_and_layers(arrays, labels=None):
        return [count_rows(a) for a in arrays] + extract(arrays, labels)

    with job.bar(source.rows) as advance:
        skipped = runner.dump(inputs_and_layers, source.batches(job.batch_size), sink, advance, work.labels)
    report = {"model": backend.path, "format": backend.format, **sink.report(
        backward.target if backward is not None else None)}
    report["skipped"] = [{"path": str(path), "reason": str(reason)} for path, reason in skipped]
    return report


# ---- validate: a dump replayed against the model that made it ------------------------------

REPLAY_BYTES = 16 << 20  # stored rows read per replayed block, about
PERTURB_SEED = 0


@dataclass
class Tolerance:
    rtol: float = 1e-5
    atol: float = 1e-8


def run_validate(path, model=None, tolerance=None, job=None):
    """Check the dump at `path` against its model (`model`, or the one it records): the
    report `validate --json` prints.

    1. End to end, when the dump's inputs are still readable (its /inputs/source files, with
       the preparation it records, giving the same rows and contents): the model runs again
       on them and every stored activation is compared with what it computes.
    2. Each stored layer output whose inputs are stored too is computed again by that layer
       alone from them (Backend.replay) and compared; an input found wrong in step 1 or here
       is replaced by its recomputed value first, so that a damaged dataset is named and not
       the layers that read it.
    3. Each replayed layer runs again on its inputs perturbed (noise of their own scale for
       numbers, rows rolled otherwise): an output that does not move is `insensitive`, not
       passed.

    Per dataset: status `replayed`, `matched end to end` (replay impossible, step 1 agrees),
    `mismatch`, `insensitive` or `not checked`, with `why`. `valid`: no mismatch."""
    from tensorprobe import pipeline, store

    tolerance = tolerance or Tolerance()
    job = job or pipeline.Job()
    with store.open_dump(path) as f, store.reading(path):
        attrs = store.root_attrs(f)
        records = store.datasets(f, all_attributes=False)
        inputs = store.input_files(f, path)
        sources = store.checked(f[f"{store.INPUTS}/source"]).asstr()[()].tolist()
    backend = pipeline.open_backend(model if model is not None else recorded_model(path))
    report = {"dump": str(path), "model": backend.path, "rtol": tolerance.rtol, "atol": tolerance.atol,
              "model_changed": bool(attrs.get("model_sha256")) and attrs.get("model_sha256") != backend.sha256,
              "end_to_end": None, "valid": True, "first_mismatch": None, "datasets": []}
    checks = [_Check(r) for r in records]
    why_not = _why_no_replay(attrs)
    activations = [c for c in checks if c.record["group"] == "activations"]
    for c in checks:
        if c.record["group"] != "activations":
            c.done("not checked", f"{c.record['group']} are not replayed (only layer outputs are)")
    origins = _origins(backend, activations) if why_not is None else {}
    for c in activations:
        if why_not is not None:
            c.done("not checked", why_not)
        elif c.name not in origins:
            c.done("not checked", "the model has no such layer output now")
    live = [c for c in activations if c.status is None]
    recomputed, report["end_to_end"] = _end_to_end(path, backend, attrs, inputs, sources, live, origins,
                                                  tolerance, job)
    with store.open_dump(path) as f, store.reading(path):
        _replay_all(f, backend, live, origins, recomputed, tolerance)
    report["datasets"] = [c.result() for c in checks]
    bad = [c.name for c in checks if c.status == "mismatch"]
    report["valid"], report["first_mismatch"] = not bad, bad[0] if bad else None
    return report


def recorded_model(path):
    """The model a dump records (its `model` attribute), refused where it is none or gone."""
    from tensorprobe import store

    with store.open_dump(path) as f:
        model = store.root_attrs(f).get("model")
    if not (isinstance(model, str) and model) or model.startswith("<"):
        raise errors.UsageError(f"'{path}' records no model file; give it with {errors.name('model')}",
                                argument="model")
    if not os.path.exists(model):
        raise errors.UsageError(f"'{path}' was made by model '{model}', which is no longer there; give it with "
                                f"{errors.name('model')}", argument="model")
    return model


class _Check:
    """The verdict on one stored dataset, built step by step."""

    def __init__(self, record):
        self.record, self.name = record, record["name"]
        self.status = self.why = None
        self.end_to_end = None  # the diff against the end-to-end run, or None
        self.replay = None  # the diff of the replay
        self.inputs = []  # the dataset names its replay read

    def done(self, status, why=None):
        self.status, self.why = status, why

    def result(self):
        return {"name": self.name, "layer": self.record["layer"], "status": self.status, "why": self.why,
                "inputs": self.inputs, "end_to_end": self.end_to_end, "replay": self.replay}


def _why_no_replay(attrs):
    """Why no layer of a dump made so can be recomputed and compared, or None."""
    reduce = attrs.get("reduce")
    if reduce not in (None, "none"):
        return f"the dump stores values pooled over the spatial axes (reduce {reduce}), not the layer outputs"
    if attrs.get("training") is True:
        return "the dump was made in training mode, whose random draws and batch statistics differ on replay"
    dtype = attrs.get("dtype")
    if dtype not in (None, "as computed"):
        return f"the dump stores values cast to {dtype}, not as computed"
    return None


def _origins(backend, checks):
    """{dataset name: origin} of the stored layer outputs the model still has: the plan of the
    stored layers, named as a dump of them names its datasets."""
    from tensorprobe import probe

    graph = backend.layer_graph
    layers = list(dict.fromkeys(c.record["layer"] for c in checks if c.record["layer"] in graph.entries))
    if not layers:
        return {}
    plan = probe.plan(graph, probe.select(graph, layers))
    return {spec.name: origin for spec, origin in zip(plan.specs, plan.origins)}


def _end_to_end(path, backend, attrs, inputs, sources, checks, origins, tolerance, job):
    """Run the model on the dump's inputs again, when they are readable as they were, and
    compare every dataset of `checks`. Returns ({dataset name: recomputed array} of those
    that differ, the record of this step)."""
    from tensorprobe import dumpdiff, pipeline, store
    from tensorprobe import shard as sharding
    from tensorprobe.inputs.options import Options

    step = {"checked": False, "why": None, "mismatches": []}
    files = [i["file"] for i in inputs]
    why = None
    if not checks:
        why = "no layer output to compare"
    elif "shard" in attrs:
        why = "the dump is one shard of a job"
    elif any(not os.path.isfile(name) for name in files):
        missing = next(name for name in files if not os.path.isfile(name))
        why = f"its input '{missing}' is not a file that can be read again"
    elif attrs.get(sharding.CONTENTS) != sharding.contents_fingerprint(files):
        why = "its input files changed since the dump (input_contents)"
    elif len(backend.input_specs(True)) != 1:
        why = "the model has several inputs, whose files /inputs/source does not tell apart"
    if why is not None:
        step["why"] = why
        return {}, step
    prep = Options(resize=attrs.get("resize", "stretch"), interpolation=attrs.get("interpolation", "bilinear"),
                   preprocess=None if attrs.get("preprocess") in (None, "none") else attrs["preprocess"],
                   scale=float(attrs.get("scale", 1.0)), offset=float(attrs.get("offset", 0.0)))
    try:
        feed = pipeline.feed(backend, files, (), prep)
    except errors.TensorprobeError as e:  # the files no longer read as the model's inputs
        step["why"] = f"its inputs cannot be read again ({e})"
        return {}, step
    again = [label for labels in zip(*(s.all_sources() for s in feed.streams)) for label in labels[:1]]
    if again != sources:
        step["why"] = "its inputs no longer give the rows /inputs/source records"
        return {}, step
    layers = list(dict.fromkeys(c.record["layer"] for c in checks))
    values = pipeline.run_activations(backend, files, pipeline.Selection(layers=tuple(layers)), prep, job)
    recomputed = {}
    with store.open_dump(path) as f, store.reading(path):
        for c in checks:
            ds = store.checked(f[c.record["group"]][c.record["path"]])
            c.end_to_end = _compare(values[c.name], ds[()], tolerance, dumpdiff)
            if c.end_to_end["outside_tolerance"]:
                recomputed[c.name] = values[c.name]
                step["mismatches"].append(c.name)
    step["checked"] = True
    return recomputed, step


def _compare(replayed, stored, tolerance, dumpdiff=None):
    """diff's comparison of a recomputed value (a) against the stored one (b)."""
    if dumpdiff is None:
        from tensorprobe import dumpdiff
    replayed, stored = np.asarray(replayed), np.asarray(stored)
    if replayed.shape != stored.shape:
        return {"shape_replayed": list(replayed.shape), "shape_stored": list(stored.shape), "outside_tolerance":
                int(stored.size) or 1, "max_abs_error": None, "worst": None}
    if stored.dtype.kind not in "biufc" or replayed.dtype.kind not in "biufc":
        running = dumpdiff.StringDiff(stored.shape)
    else:
        running = dumpdiff.RunningDiff(stored.shape, tolerance.rtol, tolerance.atol)
    running.update(replayed, stored)
    result = running.result()
    return {k: result[k] for k in ("outside_tolerance", "max_abs_error", "worst")}


def _replay_all(f, backend, checks, origins, recomputed, tolerance):
    """Steps 2 and 3 of run_validate, in model order."""
    from tensorprobe import store

    by_origin = {}
    for c in checks:
        by_origin.setdefault(origins[c.name], c)
    trusted = dict(recomputed)  # dataset name -> the value its consumers read instead of the stored one
    for c in checks:
        how = backend.replay(origins[c.name])
        stored = store.checked(f[c.record["group"]][c.record["path"]])[()]
        if isinstance(how, str):
            _without_replay(c, f"cannot be run alone: {how}")
            continue
        arguments, run = how
        feeding = [by_origin.get(o) for o in arguments]
        missing = [o for o, fed in zip(arguments, feeding) if fed is None]
        if missing:
            _without_replay(c, f"its input {_origin_text(backend, missing[0])} is not stored")
            continue
        c.inputs = [fed.name for fed in feeding]
        values = [trusted[fed.name] if fed.name in trusted else store.checked(
            f[fed.record["group"]][fed.record["path"]])[()] for fed in feeding]
        try:
            out = _blocks(run, values)
        except errors.TensorprobeError as e:  # the layer refused its stored inputs: said for this layer
            _without_replay(c, f"the layer failed on its stored inputs ({e})")
            continue
        c.replay = _compare(out, stored, tolerance)
        wrong = c.replay["outside_tolerance"] or (c.end_to_end and c.end_to_end["outside_tolerance"])
        if wrong:
            trusted.setdefault(c.name, out)
            c.done("mismatch", "the stored values differ from " + (
                "the layer's output on its inputs" if c.replay["outside_tolerance"] else "the end-to-end run"))
            continue
        moved = _compare(_blocks(run, [_perturbed(v) for v in values]), out, tolerance)
        if not moved["outside_tolerance"]:
            c.done("insensitive", "its output does not move when its stored inputs are perturbed")
        else:
            c.done("replayed")


def _without_replay(c, why):
    """A dataset that cannot be replayed alone: the end-to-end run decides where it ran."""
    if c.end_to_end is None:
        c.done("not checked", why)
    elif c.end_to_end["outside_tolerance"]:
        c.done("mismatch", f"the stored values differ from the end-to-end run ({why})")
    else:
        c.done("matched end to end", why)


def _origin_text(backend, origin):
    key, j = origin
    if key is None:
        names = [spec.name for spec in backend.input_specs(True)]
        return f"'{names[j]}' (a model input)" if j < len(names) else "(a model input)"
    return "(the output of a layer not in the dump)"


def _blocks(run, values):
    """run(values) a block of rows at a time (about REPLAY_BYTES of inputs), joined."""
    rows = len(values[0]) if values else 0
    row_bytes = max(1, sum(v[:1].nbytes for v in values))
    step = max(1, REPLAY_BYTES // row_bytes)
    parts = [np.asarray(run([v[i : i + step] for v in values])) for i in range(0, rows, step)]
    return np.concatenate(parts) if parts else np.empty((0,))


def _perturbed(value):
    """The stored input moved: numbers by noise of their own scale (and at least 1), other
    values by rolling the rows."""
    value = np.asarray(value)
    if value.dtype.kind == "f":
        rng = np.random.default_rng(PERTURB_SEED)
        finite = value[np.isfinite(value)]
        scale = float(finite.std()) + 1.0 if finite.size else 1.0
        return (value + rng.normal(scale=scale, size=value.shape)).astype(value.dtype)
    return np.roll(value, 1, axis=0)

