"""The pipeline behind `tensorprobe.run` and `tensorprobe run`: the model run with edits
(tensorprobe/edits.py) applied to its layers, through the same input feed and read / compute
/ write loop as `dump` (pipeline.py, runner.py), into memory or a dump whose /outputs group
holds the model's outputs. The backend applies the edits (Backend.edit_runner)."""

import json
import os

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

