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
        from tensorprobe.store import dataset_name

        self.inputs = [Health(name) for name in input_names]
        self.values = [Health(dataset_name(s.group, s.name), s.layer, s.layer_class, s.group) for s in specs]
        self.rows = 0

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
        forward = [h for h in self.values if h.group == "activations"]
        gradients = [h for h in self.values if h.group == "gradients"][::-1]  # backward order
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
