"""`run`: the model with layers edited (interventions), its outputs compared with the unedited
model's."""

import contextlib
import re

import click

from tensorprobe.cli import options, signals
from tensorprobe.cli.render import debug
from tensorprobe.console import err, out, quiet_native_stderr
from tensorprobe.edits import edit_option_name

# PATH[:CHANNELS][@POSITIONS], then =VALUE for the edits that take one
_TARGET = re.compile(r"(?P<path>[^:@=]+)(?::(?P<channels>[^@=]*))?(?:@(?P<positions>[^=]*))?")


def _indexes(text, what):
    """'1,3,5-7' -> (1, 3, 5, 6, 7)."""
    found = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise ValueError(f"{what} '{text}': expected indexes such as 0,3,5-7")
        first, last = int(m.group(1)), m.group(2)
        if last is not None and (first < 0 or int(last) < first):
            raise ValueError(f"{what} '{text}': a range A-B needs 0 <= A <= B")
        found.extend(range(first, int(last) + 1) if last is not None else [first])
    return found


def _edit_parser(kind):
    """A click callback: the values of --zero, --scale, ... -> [(path, edits.Edit)]."""
    from tensorprobe import edits

    takes_value = kind != "zero"

    def parse(text):
        target, sep, value = text.partition("=")
        if takes_value and (not sep or not value):
            raise ValueError(f"expected PATH[:CHANNELS][@POSITIONS]={_METAVARS[kind].split('=')[1]}")
        if not takes_value and sep:
            raise ValueError("expected PATH[:CHANNELS][@POSITIONS] (it takes no value)")
        m = _TARGET.fullmatch(target)
        if m is None or not m.group("path").strip():
            raise ValueError("expected a layer path, then :CHANNELS and @POSITIONS if any")
        part = {axis: _indexes(m.group(axis), axis) for axis in ("channels", "positions") if m.group(axis) is not None}
        path = m.group("path")
        if kind == "zero":
            edit = edits.zero(**part)
        elif kind in ("scale", "add"):
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"'{value}' is not a number") from None
            edit = getattr(edits, kind)(number, **part)
        elif kind == "set":
            edit = edits.set(_array(value), **part)
        else:
            edit = (edits.mean_from if kind == "mean" else edits.patch_from)(value, **part)
        return path, edit

    def callback(ctx, param, values):
        found = []
        for value in values:
            try:
                found.append(parse(value))
            except ValueError as e:
                raise click.BadParameter(f"'{value}': {e}", ctx, param) from None
        return tuple(found)

    return callback


def _array(path):
    """The .npy file --set PATH=FILE.npy names."""
    import os

    import numpy as np

    if not path.lower().endswith(".npy") or not os.path.isfile(path):
        raise ValueError(f"'{path}' is not a .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"'{path}' cannot be read as a .npy array: {e}") from None


_METAVARS = {"zero": "PATH[:CH]", "scale": "PATH[:CH]=K", "add": "PATH[:CH]=V", "set": "PATH[:CH]=FILE.npy",
             "mean": "PATH[:CH]=DUMP.h5", "patch": "PATH[:CH]=DUMP.h5"}
_HELP = {
    "zero": "Set the output of layer PATH to 0 (zero ablation).",
    "scale": "Multiply the output of PATH by K.",
    "add": "Add V to the output of PATH.",
    "set": "Replace the output of PATH by the array in FILE.npy (one sample's shape, broadcast).",
    "mean": "Replace the output of PATH by its mean over the rows of DUMP.h5 (mean ablation).",
    "patch": "Replace the output of PATH by the same rows of PATH in DUMP.h5 (activation patching).",
}


def _dest(kind):
    return f"{kind}_edits"


def _edits(zero_edits, scale_edits, add_edits, set_edits, mean_edits, patch_edits):
    """Every edit given, in the options' order (several on one layer apply in that order)."""
    return [*zero_edits, *scale_edits, *add_edits, *set_edits, *mean_edits, *patch_edits]


# `edits`: [(path, edits.Edit)]. The edit `scale` is --multiply: --scale scales the inputs, as in dump.
edit_options = options.record(
    "edits", _edits,
    *(click.option(edit_option_name(kind), _dest(kind), multiple=True, metavar=_METAVARS[kind],
                   callback=_edit_parser(kind), help=_HELP[kind] + " Repeatable.")
      for kind in ("zero", "scale", "add", "set", "mean", "patch")),
)


@click.command("run")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-m", "--model", "model", envvar="TENSORPROBE_MODEL", show_envvar=True,
              type=click.Path(exists=True), required=True, help="The model: a .keras or .h5 file.")
@edit_options
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="Also write this layer's output (as edited) to the dump. Repeatable.")
@click.option("--match", metavar="REGEX", help="Also write every layer whose path matches REGEX.")
@click.option("-o", "--output", type=click.Path(), callback=options.hdf5_output,
              help="Write the outputs (/outputs/<name>) and the chosen layers to this HDF5 file.")
@options.overwrite_option()
@options.job_options
@options.input_options
@click.option("--training", is_flag=True, help="Run in training mode (Dropout on, BatchNormalization on batch "
                                               "statistics).")
@click.option("--json", "as_json", is_flag=True, help="Print what the edits did as JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@options.model_options
def run(inputs, model, edits, layer_names, match, output, overwrite, job, training, as_json, quiet):
    """Run the model on INPUTS with the outputs of layers edited before the rest of the model
    reads them, and say how far each model output moved from the unedited model's (the
    largest absolute change; for a classifier, how many samples changed their top class).

    PATH is a layer as --layer takes it; PATH/call_K edits one call of a shared layer, and
    :CHANNELS (0,3,5-7: the last axis) and @POSITIONS (the axis after the batch) edit part
    of it. An edit on a layer that does not run for the model's outputs is an error, never
    a silent no-op. Inputs and their options as for `dump`. Keras models only.

    \b
      tensorprobe run -m model.keras x.npy --zero fc1
      tensorprobe run -m model.keras x.npy --zero block1_conv2:0,3 --multiply fc1=0.5 -o edited.h5
      tensorprobe run -m model.keras corrupt.npy --patch fc1=clean.h5 --json
      tensorprobe run -m transformer.keras tokens.npy --mean block_2/attn@4=clean.h5
    """
    from tensorprobe import interventions, pipeline, store, text

    text.regex(match, "--match")
    found = interventions.edit_list(edits)
    selection = pipeline.Selection(layer_names, match, training=training)
    signals.runner_limits()
    if output is not None:
        signals.stop_on_signals(store)
    else:
        signals.terminate_on_sigterm()
    command = ["tensorprobe", *click.get_current_context().find_root().command.argv]
    written = signals.success_once_written(store, output) if output is not None else contextlib.nullcontext()
    with written, quiet_native_stderr(not debug()):
        backend = model.open().backend
        result = interventions.run_edits(backend, inputs.paths, inputs.named, found, selection, inputs.prep, job,
                                         output=output, overwrite=overwrite, attrs={"command": command})
    if as_json:
        import json

        out.print(json.dumps({"output": output, **result.to_json()}, indent=2), markup=False, highlight=False)
    elif not quiet:
        _print(result, output)


def _print(result, output):
    from rich import box
    from rich.table import Table

    from tensorprobe import report

    table = Table(title="change from the unedited model", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("output", "max abs change", "top class changed"):
        table.add_column(name, justify="left" if name == "output" else "right")
    for name, change in result.change.items():
        top = change["top_class_changed"]
        table.add_row(name, f"{change['max_abs_change']:.6g}", "" if top is None else str(top))
    report.print_table(err, table, keep="output")
    for path, applied in result.applied.items():
        err.print(f"edited {path}: {applied['calls']} call(s), max abs change {applied['max_abs_change']:.6g}",
                  markup=False, highlight=False, soft_wrap=True)
    if output is not None:
        err.print(f"wrote {output}", markup=False, highlight=False, soft_wrap=True)


@click.command("patch")
@click.option("-m", "--model", "model", envvar="TENSORPROBE_MODEL", show_envvar=True,
              type=click.Path(exists=True), required=True, help="The model: a .keras or .h5 file.")
@click.option("--clean", "clean", multiple=True, required=True, type=click.Path(), metavar="INPUTS",
              help="The clean inputs (files, folders, globs, as dump takes them). Repeatable.")
@click.option("--corrupt", "corrupt", multiple=True, required=True, type=click.Path(), metavar="INPUTS",
              help="The corrupted inputs, as many rows as the clean ones. Repeatable.")
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="A layer to patch (as dump's --layer). Repeatable.")
@click.option("--match", metavar="REGEX", help="Patch every layer whose path matches REGEX.")
@click.option("--positions", is_flag=True, help="Patch each position of the axis after the batch, one at a time.")
@click.option("--metric", required=True, metavar="METRIC",
              help="logit_diff:I,J (output I minus J), prob:K (the softmax of the output at K) or l2 "
                   "(the distance from the clean output).")
@click.option("--target-output", metavar="NAME", help="The model output the metric reads (of several).")
@click.option("-o", "--output", type=click.Path(), callback=options.hdf5_output,
              help="Write the sweep to this HDF5 file (/sweep/<metric>, /sweep/recovered, /sweep/layers).")
@click.option("--plot", "picture", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw the recovered fraction as a heat map (png, svg or pdf; needs the plot extra).")
@options.overwrite_option()
@options.job_options
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@options.model_options
def patch(model, clean, corrupt, layer_names, match, positions, metric, target_output, output, picture,
          overwrite, job, as_json, quiet):
    """Activation patching, swept: for each chosen layer (and with --positions, each position
    of its sequence), run the corrupt inputs with that value replaced by the clean inputs'
    (row i by row i) and measure METRIC on the output, averaged over the inputs, as measured
    and as the recovered fraction (patched - corrupt) / (clean - corrupt). All positions of a
    layer run in one forward pass. Inputs are prepared as dump prepares them by default.

    \b
      tensorprobe patch -m model.keras --clean clean.npy --corrupt corrupt.npy --match 'block_\\d+$' \\
          --positions --metric logit_diff:0,1 -o sweep.h5 --plot sweep.png
    """
    import json

    from tensorprobe import interventions, pipeline, text
    from tensorprobe.inputs.options import Options

    text.regex(match, "--match")
    interventions.parse_metric(metric)
    if picture is not None:
        from tensorprobe import plot, store
        from tensorprobe.plot import figures

        plot.picture_format(picture, "--plot")
        store.check_output(picture, overwrite, "--plot")
        figures.matplotlib_figure()
    if output is not None:
        from tensorprobe import store

        store.check_output(output, overwrite)
    selection = pipeline.Selection(layer_names, match)
    signals.runner_limits()
    signals.terminate_on_sigterm()
    with quiet_native_stderr(not debug()):
        backend = model.open().backend
        result = interventions.run_patch(backend, list(clean), list(corrupt), selection, metric, Options(), job,
                                         positions=positions, target_output=target_output)
    command = ["tensorprobe", *click.get_current_context().find_root().command.argv]
    if output is not None:
        from tensorprobe.version import __version__

        interventions.write_sweep(result, output, overwrite, {"model": backend.path, "command": command,
                                                              "tensorprobe_version": __version__})
    if picture is not None:
        from tensorprobe import plot

        plot.sweep_picture(result, picture, overwrite)
    if as_json:
        out.print(json.dumps(interventions.sweep_json(result), indent=2), markup=False, highlight=False)
    elif not quiet:
        _print_sweep(result)
        for path in (output, picture):
            if path is not None:
                err.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


def _print_sweep(result):
    import math

    from rich import box
    from rich.table import Table

    from tensorprobe import report

    kind = result["metric"]
    title = (f"{kind} over {result['samples']} inputs: clean {result['clean'].mean():.4g}, corrupt "
             f"{result['corrupt'].mean():.4g}; recovered = (patched - corrupt) / (clean - corrupt)")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("layer")
    width = result["mean"].shape[1] if result["positions"] else 1
    columns = [f"pos {p}" for p in range(width)] if result["positions"] else ["patched", "recovered"]
    for name in columns:
        table.add_column(name, justify="right")

    def cell(v):  # no sign on what rounds to 0: -0.000 says nothing
        return "" if math.isnan(v) else f"{v:.3f}".replace("-0.000", "0.000")

    for j, layer in enumerate(result["layers"]):
        if result["positions"]:
            table.add_row(layer, *(cell(v) for v in result["recovered"][j]))
        else:
            table.add_row(layer, f"{result['mean'][j, 0]:.4g}", cell(result["recovered"][j, 0]))
    report.print_table(err, table, keep="layer")
    if result["positions"]:
        err.print("(the recovered fraction per position)", markup=False, highlight=False)
