"""The pipeline behind `tensorprobe.run` and `tensorprobe run`: the model run with edits
(tensorprobe/edits.py) applied to its layers, through the same input feed and read / compute
/ write loop as `dump` (pipeline.py, runner.py), into memory or a dump whose /outputs group
holds the model's outputs. The backend applies the edits (Backend.edit_runner)."""

import json
import os
import warnings

from tensorprobe import errors
from tensorprobe.edits import RunResult, coerce


def edit_list(edits):
    """`edits` as the API takes it ({path: edit} or [(path, edit)]) -> [(path, edits.Edit)]."""
    if edits is None:
        edits = {}
    items = list(edits.items()) if isinstance(edits, dict) else list(edits)
    found = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0]):
            raise errors.UsageError(f"edits: expected {{layer path: edit}} or [(layer path, edit)], got {item!r}",
                                    argument="edits")
        found.append((item[0], coerce(item[1], f"edits['{item[0]}']")))
    if not found:
        raise errors.UsageError(errors.words("no edit given: give --zero PATH, --scale PATH=K, --add PATH=V, "
                                             "--set PATH=FILE.npy, --mean PATH=DUMP.h5 or --patch PATH=DUMP.h5",
                                             "edits: give at least one {layer path: edit}"), argument="edits")
    return found


def edits_attribute(edits):
    """The dump's root attribute `edits`: a JSON list of {"layer", "edit"} as given."""
    return json.dumps([{"layer": name, "edit": edit.describe()} for name, edit in edits])


def run_edits(model, x, named, edits, selection, prep, job, *, output=None, overwrite=False, attrs=None,
              baseline=True):
    """The model on `x` with `edits` ([(layer name, edits.Edit)]) applied: a RunResult; with
    `output`, a dump there instead (/outputs/<name>, the selected layers under /activations,
    the edits and what they did in the root attributes), and the result's `outputs` and
    `activations` are empty: the values are in the file."""
    from tensorprobe import pipeline, runner, store
    from tensorprobe.store import MemorySink

    if selection.wants_layers:
        selection.check(prep.skip_bad)
    if prep.skip_bad and any(edit.kind == "patch" for _, edit in edits):
        raise errors.UsageError(f"{errors.name('skip_bad')} cannot be combined with a patch: its rows would no "
                                "longer match the inputs'", argument="skip_bad")
    if output is not None:
        output = os.fspath(output)
        store.check_hdf5_name(output, "output")
        store.check_output(output, overwrite)
    backend = pipeline.open_backend(model)
    source = pipeline.feed(backend, x, named, prep, True, job.stdin)
    plan, extract = backend.edit_runner(edits, selection, source.rows, baseline)
    values = {}
    if output is None:
        memory = MemorySink(plan.specs, rows=source.rows)
        with job.bar(source.rows) as advance:
            runner.dump(extract, source.batches(job.batch_size), memory, advance)
        values = memory.finish()
    else:
        root = {**pipeline.root_attrs(backend, prep), **(attrs or {}), "total_rows": source.rows,
                "training": selection.training, "reduce": "none", "dtype": "as computed", "compression": "none",
                "edits": edits_attribute(edits)}
        with store.DumpWriter(output, plan.specs, root, overwrite, rows=source.rows,
                              batch_rows=job.batch_size) as writer:
            with job.bar(source.rows) as advance:
                runner.dump(extract, source.batches(job.batch_size), writer, advance)
            writer.file.attrs["applied"] = json.dumps(extract.tally.applied())
            writer.finish()
    outputs = {k[len("outputs/"):]: v for k, v in values.items() if k.startswith("outputs/")}
    activations = {k: v for k, v in values.items() if not k.startswith("outputs/")}
    return RunResult(outputs, activations, extract.tally.applied(), extract.tally.change() if baseline else None)



# ---- activation patching sweeps ----------------------------------------------------------------

METRICS = ("logit_diff:I,J", "prob:K", "l2")


def parse_metric(text):
    """'logit_diff:I,J', 'prob:K' or 'l2' -> (kind, (numbers))."""
    kind, _, value = (text or "").partition(":")
    numbers = value.split(",") if value else []
    if all(n.strip().isdigit() for n in numbers):
        numbers = tuple(int(n) for n in numbers)
        if (kind, len(numbers)) in (("logit_diff", 2), ("prob", 1), ("l2", 0)):
            return kind, numbers
    raise errors.UsageError(f"{errors.name('metric')} '{text}': expected {', '.join(METRICS)}", argument="metric")


def run_patch(model, clean, corrupt, selection, metric, prep, job, *, positions=False, target_output=None):
    """The activation patching sweep: for each layer `selection` chooses (and with
    `positions`, each position of its sequence axis), the metric of the corrupt inputs run
    with that value replaced by the clean inputs' (row i by row i). A dict: `layers`
    (dataset names, model order), `metric`, `clean` and `corrupt` (per input), `per_input`
    (layers, positions, inputs; NaN past a layer's positions), `mean` (layers, positions) and
    `recovered` ((mean - corrupt mean) / (clean mean - corrupt mean))."""
    import numpy as np

    from tensorprobe import pipeline

    kind = parse_metric(metric)
    selection.check(prep.skip_bad)
    if prep.skip_bad:
        raise errors.UsageError(f"{errors.name('skip_bad')} cannot be combined with a sweep: the clean and corrupt "
                                "rows would no longer pair", argument="skip_bad")
    backend = pipeline.open_backend(model)
    sources = [pipeline.feed(backend, x, (), prep, True, job.stdin) for x in (clean, corrupt)]
    if sources[0].rows != sources[1].rows:
        raise errors.UsageError(f"the clean inputs are {sources[0].rows} rows and the corrupt ones {sources[1].rows}: "
                                "a sweep pairs row i with row i", argument="corrupt")
    sweep = backend.patch_runner(selection, positions, kind, target_output)
    rows = sources[0].rows
    per_input = None  # (layers, positions, rows), once the first batch gives every layer's positions
    widths = []
    clean_metric, corrupt_metric = np.empty(rows), np.empty(rows)
    start = 0
    with job.bar(rows) as advance:
        for good, bad in zip(sources[0].batches(job.batch_size), sources[1].batches(job.batch_size)):
            stop = start + len(good.sources)
            values = sweep.clean(good.arrays)
            layers, clean_metric[start:stop], reference = values[:-2], values[-2], values[-1]
            corrupt_metric[start:stop] = sweep.metric(bad.arrays, reference)
            found = [value.shape[1] if positions else 1 for value in layers]
            if per_input is None:
                widths = found
                per_input = np.full((len(sweep.names), max(widths), rows), np.nan)
            elif found != widths:
                raise errors.InputError(f"the inputs of rows {start} to {stop - 1} give the sequence lengths "
                                        f"{found}, the first ones gave {widths}: a sweep over positions needs "
                                        "one length", argument="clean")
            for j, rows_j in enumerate(layers):
                per_input[j, :widths[j], start:stop] = sweep.patched(j, bad.arrays, rows_j, reference)
            if advance is not None:
                advance(stop - start)
            start = stop
    if per_input is None:  # no rows
        per_input = np.full((len(sweep.names), 1, 0), np.nan)
    with warnings.catch_warnings():  # a layer's columns past its positions are NaN, as their mean
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(per_input, axis=2)
    gap = clean_metric.mean() - corrupt_metric.mean()
    recovered = (mean - corrupt_metric.mean()) / gap if gap != 0 else np.full_like(mean, np.nan)
    return {"layers": sweep.names, "positions": positions, "metric": metric, "samples": rows,
            "clean": clean_metric, "corrupt": corrupt_metric, "per_input": per_input, "mean": mean,
            "recovered": recovered}


def sweep_json(result):
    """What `tensorprobe patch --json` prints (NaN as null)."""
    import math

    def plain(array):
        return [plain(a) for a in array] if getattr(array, "ndim", 0) else (
            None if math.isnan(float(array)) else float(array))

    squeeze = (lambda a: a) if result["positions"] else (lambda a: a[:, 0])
    return {"layers": result["layers"], "metric": result["metric"], "positions": result["positions"],
            "samples": result["samples"], "clean": float(result["clean"].mean()),
            "corrupt": float(result["corrupt"].mean()), "mean": plain(squeeze(result["mean"])),
            "recovered": plain(squeeze(result["recovered"]))}


def write_sweep(result, output, overwrite, attrs):
    """SWEEP.h5: /sweep/<metric kind> (layers[, positions]) averaged over the inputs,
    /sweep/<kind>_per_input (layers[, positions], inputs), /sweep/recovered, /sweep/clean and
    /sweep/corrupt (per input), /sweep/layers (the layer paths); `attrs` at the root."""
    import h5py

    from tensorprobe import store

    kind = result["metric"].partition(":")[0]
    squeeze = (lambda a: a) if result["positions"] else (lambda a: a[:, 0])
    with store.atomic_output(output, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in {**attrs, "metric": result["metric"], "positions": result["positions"],
                               "samples": result["samples"]}.items():
                f.attrs[key] = value
            group = f.create_group("sweep")
            group[kind] = squeeze(result["mean"])
            group[f"{kind}_per_input"] = squeeze(result["per_input"])
            group["recovered"] = squeeze(result["recovered"])
            group["clean"] = result["clean"]
            group["corrupt"] = result["corrupt"]
            group.create_dataset("layers", data=result["layers"], dtype=h5py.string_dtype("utf-8"))
