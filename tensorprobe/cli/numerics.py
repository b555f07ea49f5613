"""`nanhunt` and `validate`: is a model's arithmetic sound, and is a dump what its model computes."""

import json
import sys

import click

from tensorprobe import errors
from tensorprobe.cli import options, signals
from tensorprobe.cli.render import debug
from tensorprobe.console import err, out, quiet_native_stderr

MODEL_HELP = "The model: .keras, .h5, .tflite, .onnx, a SavedModel folder, a frozen graph (.pb, .pbtxt)."


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-m", "--model", "model", envvar="TENSORPROBE_MODEL", show_envvar=True,
              type=click.Path(exists=True), required=True, help=MODEL_HELP)
@click.option("--backward", is_flag=True,
              help="Also the gradients w.r.t. each layer's output, in backward order (Keras models).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Labels .npy for --loss, one row per sample.")
@click.option("--loss", metavar="NAME", help="The Keras loss to differentiate (--backward; needs --labels).")
@click.option("--target", metavar="TARGET",
              help="Instead of --loss: class:K, top (the default), sum or loss:NAME, as dump --target.")
@click.option("--target-output", metavar="NAME", help="The model output the target is taken from.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object to stdout.")
@options.job_options
@options.input_options
@options.run_mode_options
@options.signature_option
@options.model_options
def nanhunt(inputs, model, backward, labels, loss, target, target_output, as_json, job, training, jit):
    """Find the first layer, in the model's compute order, whose output holds a NaN or Inf
    made from finite inputs: which samples, how many elements, NaN/+Inf/-Inf counts, with the
    model's inputs checked too. With --backward, also the gradients of --loss (or --target)
    w.r.t. each layer's output, in backward order, and the first layer whose gradient is
    non-finite while the forward pass is finite (a sqrt at 0, a log near 0 after it).

    One pass, in bounded memory: a Keras model counts inside its own compiled function (also
    for a model trained with jit_compile); other formats are counted batch by batch. Exit
    status 0 when everything is finite, 1 when anything is not.

    \b
      tensorprobe nanhunt -m model.keras batch.npy
      tensorprobe nanhunt -m model.keras batch.npy --backward --labels y.npy --loss mse
      tensorprobe nanhunt -m model.tflite photos/ --json | jq .forward.culprit
    """
    from tensorprobe import numerics, store

    if not backward:
        stray = options.given("labels", "loss", "target", "target_output")
        if stray:
            raise click.UsageError(f"{stray[0]} goes with --backward")
    how = None
    if backward:
        how = numerics.Backward(numerics.backward_target(target, loss, labels), labels, target_output)
    signals.runner_limits()
    signals.stop_on_signals(store)
    with quiet_native_stderr(not debug()):
        backend = model.open(True).backend
        report = numerics.run_nanhunt(backend, inputs.paths, inputs.named, inputs.prep, job, how, training, jit)
    if as_json:
        out.print(json.dumps(report, indent=2), markup=False, highlight=False)
    else:
        print_nanhunt(report)
    sys.exit(0 if report["finite"] else errors.FAILURE)


def print_nanhunt(report):
    """The report for people, on stderr: the inputs and the layers up to the first non-finite
    one in compute order (and the gradients in backward order), then what it means."""
    from rich import box
    from rich.table import Table

    from tensorprobe import report as tables

    for path_reason in report["skipped"]:
        err.print(f"skipped {path_reason['path']}: {path_reason['reason']}", markup=False, highlight=False,
                  soft_wrap=True)
    sections = [("forward", "output", "inputs_finite")]
    if report["backward"] is not None:
        sections.append(("backward", "gradient", "forward_finite"))
    for key, what, clean in sections:
        section = report[key]
        title = (f"{report['model']}: {report['samples']} samples, layer outputs in compute order" if key == "forward"
                 else f"gradients of {section['target']} w.r.t. each layer's output, in backward order")
        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("layer", "class", "NaN", "+Inf", "-Inf", "samples", "status"):
            table.add_column(name, justify="right" if name in ("NaN", "+Inf", "-Inf") else "left")
        if key == "forward":
            for record in report["inputs"]:
                table.add_row(f"input {record['name']}", "", *_counts(record), _samples(record),
                              "finite" if record["finite"] else "NON-FINITE")
        shown = _shown(section)
        for record in section["layers"][:shown]:
            status = "finite" if record["finite"] else "NON-FINITE" if record[clean] else \
                f"non-finite ({'inputs' if key == 'forward' else 'forward pass'} too)"
            if record["name"] == section["culprit"]:
                status = "NON-FINITE: first"
            table.add_row(record["name"], record["class"], *_counts(record), _samples(record), status)
        tables.print_table(err, table, keep="layer", drop=("class", "samples"))
        rest = section["layers"][shown:]
        if rest:
            bad = sum(not r["finite"] for r in rest)
            err.print(f"{len(rest)} more after it, {bad} of them non-finite (--json lists every one)",
                      markup=False, highlight=False, soft_wrap=True)
        err.print(_verdict(report, key, what), markup=False, highlight=False, soft_wrap=True)


def _shown(section):
    """The rows shown: every layer up to the culprit (or the first non-finite one)."""
    names = [r["name"] for r in section["layers"]]
    stop = section["culprit"] or section["first_nonfinite"]
    return names.index(stop) + 1 if stop is not None else len(names)


def _counts(record):
    return [f"{record['nan']:,}", f"{record['posinf']:,}", f"{record['neginf']:,}"]


def _samples(record):
    if record["finite"]:
        return ""
    rows = ", ".join(str(s["row"]) for s in record["samples"])
    more = record["nonfinite_samples"] - len(record["samples"])
    return f"{record['nonfinite_samples']}: {rows}" + (f", +{more}" if more > 0 else "")


def _verdict(report, key, what):
    section = report[key]
    culprit = section["culprit"]
    if culprit is not None:
        record = next(r for r in section["layers"] if r["name"] == culprit)
        first = next((s for s in record["samples"] if s["row"] == section["culprit_first_sample"]), None)
        where = f", first in sample {first['row']} ({first['source']})" if first else ""
        if key == "forward":
            return (f"first non-finite: layer '{record['layer']}' ({record['class']}) makes NaN or Inf from "
                    f"finite inputs in {record['nonfinite_samples']} sample(s){where}")
        after = section.get("after")
        made = f"; the gradient of '{after}', before it in backward order, is finite there" if after else ""
        return (f"first non-finite gradient: w.r.t. the output of layer '{record['layer']}' ({record['class']}), "
                f"with the forward pass finite, in {record['nonfinite_samples']} sample(s){where}{made}")
    if section["first_nonfinite"] is not None:
        cause = "the inputs" if key == "forward" else "the forward pass"
        return f"every non-finite {what} comes from {cause}, already non-finite in those samples"
    bad_inputs = [r["name"] for r in report["inputs"] if not r["finite"]]
    if key == "forward" and bad_inputs:
        return f"the input {bad_inputs[0]} holds NaN or Inf; every layer output is finite"
    return f"every {what} is finite"


@click.command()
@click.argument("dump_file", metavar="DUMP.h5", type=click.Path(exists=True, dir_okay=False))
@click.option("-m", "--model", "model_path", type=click.Path(exists=True),
              help="The model that made the dump (default: the one it records).")
@click.option("--rtol", default=1e-5, show_default=True, type=float, callback=options.tolerance,
              help="Relative tolerance, as diff's: values match when |a - b| <= atol + rtol * |b|.")
@click.option("--atol", default=1e-8, show_default=True, type=float, callback=options.tolerance,
              help="Absolute tolerance, as diff's.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object to stdout.")
@options.job_options
@click.option("--custom-objects", "custom_objects", multiple=True, metavar="FILE.py",
              type=click.Path(exists=True, dir_okay=False),
              help="Import FILE.py (runs it) for the custom layers the model uses. Repeatable.")
@click.option("--unsafe", is_flag=True, help="Allow loading Lambda layers that hold Python code (trusted files only).")
def validate(dump_file, model_path, rtol, atol, as_json, job, custom_objects, unsafe):
    """Check a dump against the model that made it: re-run the model end to end on the dump's
    inputs (when its /inputs/source files are still readable and unchanged) and compare every
    stored layer output; re-run each stored layer alone on its stored inputs (Keras models)
    and compare; perturb those inputs to confirm the output moves. One line per dataset:
    replayed, matched end to end, mismatch, insensitive, or not checked (and why). Exit
    status 0 when nothing mismatches, 1 when something does.

    \b
      tensorprobe validate acts.h5
      tensorprobe validate acts.h5 -m model.keras --atol 1e-5 --json | jq .first_mismatch
    """
    from tensorprobe import api, numerics

    path = model_path or numerics.recorded_model(dump_file)
    with quiet_native_stderr(not debug()):
        backend = api.open_model(path, custom_objects, unsafe).backend
        report = numerics.run_validate(dump_file, backend, numerics.Tolerance(rtol, atol), job)
    if as_json:
        out.print(json.dumps(report, indent=2), markup=False, highlight=False)
    else:
        print_validate(report)
    sys.exit(0 if report["valid"] else errors.FAILURE)


def print_validate(report):
    """One line per dataset on stderr, then the verdict."""
    step = report["end_to_end"]
    if step is not None and not step["checked"]:
        err.print(f"end to end: not checked: {step['why']}", markup=False, highlight=False, soft_wrap=True)
    if report["model_changed"]:
        err.print(f"warning: '{report['model']}' is not the file that made the dump (its model_sha256 differs)",
                  markup=False, highlight=False, soft_wrap=True)
    for d in report["datasets"]:
        why = f": {d['why']}" if d["why"] and d["status"] != "mismatch" else ""
        line = f"{d['name']}: {d['status']}{why}"
        if d["status"] == "mismatch":
            diff = d["replay"] if d["replay"] and d["replay"]["outside_tolerance"] else d["end_to_end"]
            line += f" ({d['why']}: {diff['outside_tolerance']:,} values outside tolerance{_worst(diff)})"
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    first = report["first_mismatch"]
    err.print(f"first mismatch: {first}" if first else "no mismatch", markup=False, highlight=False, soft_wrap=True)


def _worst(diff):
    worst = diff.get("worst")
    if not worst:
        return ""
    return f", worst at sample {worst['sample']} {tuple(worst['position'])}: {worst['a']!r} recomputed, " \
           f"{worst['b']!r} stored"
