"""The command line: parse, call the core, render. No model logic lives here.

TensorFlow and Keras are imported only inside commands that load a model, so `--help`,
`--version` and usage errors stay fast.
"""

import os
import signal
import sys
from datetime import datetime, timezone

import click

from tensorprobe import __version__, errors
from tensorprobe.console import err, out, quiet_native_stderr


class TensorprobeGroup(click.Group):
    """Turns every failure into one `error:` line and an exit status a script can branch on:
    0 ok, 1 run-time failure, 2 usage error, 130 interrupted, 143 terminated. `--debug` (or
    TENSORPROBE_DEBUG=1) shows the traceback instead."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        self.debug = _env_debug()
        self.argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _error("interrupted")
            sys.exit(errors.INTERRUPTED)
        except click.ClickException as e:
            if self.debug:
                raise
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
            _error(e.format_message() + hint)
            sys.exit(e.exit_code)
        except errors.TensorprobeError as e:
            if self.debug:
                raise
            _error(str(e))
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:  # outside a command (click's own parsing)
            _error("interrupted")
            sys.exit(errors.TERMINATED if isinstance(e, errors.Terminated) else errors.INTERRUPTED)
        if isinstance(rv, int) and not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


    def invoke(self, ctx):
        # Catch Ctrl-C here, before click turns it into Abort with a stray blank line.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise errors.Interrupted(isinstance(e, errors.Terminated)) from e


def _env_debug():
    return os.environ.get("TENSORPROBE_DEBUG", "") not in ("", "0")


def _error(message):
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


@click.group(cls=TensorprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tensorprobe")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's own log lines.")
@click.pass_context
def cli(ctx, debug):
    """Look inside Keras models: list their layers, dump any layer's activations to HDF5.

    \b
      tensorprobe layers model.keras
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      tensorprobe dump -m model.h5 --layer vgg16/block1_conv2 -o acts.h5 *.npy
    """
    if debug:
        ctx.command.debug = True


def model_options(f):
    f = click.option(
        "--unsafe", is_flag=True,
        help="Allow loading Lambda layers that hold Python code (runs that code; trusted files only).",
    )(f)
    return f


def _debug():
    return getattr(click.get_current_context().find_root().command, "debug", False)


def _load(model_path, unsafe):
    from tensorprobe.graph import unroll
    from tensorprobe.models import load_model

    loaded = load_model(model_path, unsafe=unsafe)
    return loaded, unroll(loaded.model, loaded.keras)


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of layers to stdout.")
@click.option("--filter", "pattern", metavar="REGEX", help="Keep layers whose path matches REGEX (re.search).")
@model_options
def layers(model, as_json, pattern, unsafe):
    """List every layer of MODEL, nested models expanded into paths.

    \b
      tensorprobe layers model.keras
      tensorprobe layers model.h5 --filter 'block1'
      tensorprobe layers model.keras --json | jq '.[].path'
    """
    import re

    from tensorprobe import report
    from tensorprobe.layers import describe

    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as e:
        raise errors.UsageError(f"--filter '{pattern}': not a valid regular expression ({e})") from e
    with quiet_native_stderr(not _debug()):
        loaded, graph = _load(model, unsafe)
        info = describe(loaded, graph)
    if regex is not None:
        info.layers = [layer for layer in info.layers if regex.search(layer.path)]
    if as_json:
        out.print(report.layers_json(info), markup=False, highlight=False)
        return
    report.print_table(out, report.layers_table(info, f"{model}: {info.name} ({loaded.loader})"))
    for line in report.model_footer(info):
        out.print(line, markup=False, highlight=False)


def _parsed(parse):
    """A click callback that parses an option's value with `parse`, a usage error otherwise."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            if isinstance(value, tuple):
                return tuple(parse(v) for v in value)
            return parse(value)
        except ValueError as e:
            raise click.BadParameter(f"'{value}': {e}", ctx, param) from None

    return callback


def input_options(f):
    """How inputs are found and prepared (dump's input options)."""
    from tensorprobe.inputs import options as o

    for decorator in reversed([
        click.option("--input", "named_inputs", multiple=True, metavar="NAME=PATH",
                     callback=_parsed(o.parse_named),
                     help="Feed the model input NAME from PATH (a file, folder, glob or @list). Repeatable."),
        click.option("--resize", type=click.Choice(o.RESIZE_MODES), default="stretch", show_default=True,
                     help="Fit images to the input's size: stretch, crop (cover, cut the centre) or "
                          "pad (fit inside, zero border)."),
        click.option("--no-resize", is_flag=True, help="Refuse images whose size is not the input's."),
        click.option("--interpolation", type=click.Choice(o.INTERPOLATIONS), default="bilinear",
                     show_default=True, help="The tf.image.resize method."),
        click.option("--size", metavar="HxW", callback=_parsed(o.parse_size),
                     help="Resize images to HxW for an input that takes any size."),
        click.option("--preprocess", metavar="NAME",
                     help="keras.applications preprocessing: vgg16, resnet50, mobilenet_v2, ..."),
        click.option("--scale", metavar="FACTOR", callback=_parsed(o.parse_number),
                     help="Multiply inputs by FACTOR (e.g. 1/255), before --offset and --preprocess."),
        click.option("--offset", metavar="VALUE", callback=_parsed(o.parse_number),
                     help="Add VALUE to inputs, after --scale."),
        click.option("--skip-bad", is_flag=True,
                     help="Pass over images that cannot be read, listing them in /inputs/skipped."),
    ]):
        f = decorator(f)
    return f


def _preparation(resize, no_resize, interpolation, size, preprocess, scale, offset, skip_bad):
    from tensorprobe.inputs.options import Options

    return Options(
        resize="none" if no_resize else resize, interpolation=interpolation, size=size,
        preprocess=preprocess, scale=1.0 if scale is None else scale,
        offset=0.0 if offset is None else offset, skip_bad=skip_bad,
    )


@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-m", "--model", "model", envvar="TENSORPROBE_MODEL", show_envvar=True,
              type=click.Path(exists=True), required=True, help="The model file (.keras, .h5).")
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="A layer name, nested path (vgg16/block1_conv2) or index (3, 1.3). Repeatable.")
@click.option("--match", metavar="REGEX", help="Also select every layer whose path matches REGEX.")
@click.option("--all", "all_layers", is_flag=True, help="Select every layer (input layers aside).")
@click.option("-o", "--output", default="activations.h5", show_default=True, type=click.Path(),
              help="The HDF5 file to write.")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("-b", "--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Samples per forward pass.")
@input_options
@click.option("--json", "as_json", is_flag=True, help="Print the dump summary as JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@model_options
def dump(inputs, model, layer_names, match, all_layers, output, overwrite, batch_size, as_json,
         quiet, unsafe, **input_settings):
    """Compute the outputs of the chosen layers for INPUTS and write them to HDF5.

    INPUTS are .npy, .npz and image files (PNG, JPEG, BMP, GIF), folders (searched
    recursively), quoted glob patterns, @LIST files (one path a line) and - (a .npy on
    stdin). An array whose shape is the model's input shape is one sample; otherwise its
    first axis is the batch. Images are resized to the model's input size. A model with
    several inputs takes .npz files whose keys are its input names, or --input NAME=PATH.

    \b
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      tensorprobe dump -m model.keras -l block1_conv2 --preprocess vgg16 photos/
      tensorprobe dump -m model.keras -l fc1 --scale 1/255 'photos/**/*.jpg' @more.txt
      tensorprobe dump -m two_inputs.keras -l concat --input image=photos/ --input meta=meta.npy
      TENSORPROBE_MODEL=model.h5 tensorprobe dump -l vgg16/block1_conv2 -l 3 a.npy b.npy
      tensorprobe dump -m model.keras --match 'conv' -o convs.h5 --json input.npy | jq
    """
    from tensorprobe import report, runner, store
    from tensorprobe.inputs import sources

    if not (layer_names or match or all_layers):
        raise click.UsageError("no layer selected: give --layer NAME, --match REGEX or --all")
    named_inputs = input_settings.pop("named_inputs")
    prep = _preparation(**input_settings)
    store.check_output(output, overwrite)
    positional, named = sources.gather(inputs, named_inputs)
    signal.signal(signal.SIGTERM, _terminate)

    with quiet_native_stderr(not _debug()):
        from tensorprobe import probe
        from tensorprobe.inputs import feed, preprocess, spec

        function = preprocess.lookup(prep.preprocess) if prep.preprocess else None
        loaded, graph = _load(model, unsafe)
        selected = probe.select(graph, layer_names, match, all_layers)
        plan = probe.plan(graph, selected)
        source = feed.open_feed(spec.from_graph(graph), positional, named, prep,
                                click.get_binary_stream("stdin"), function)
        extract = probe.extraction_function(graph, plan)
        with store.DumpWriter(output, plan.specs, _root_attrs(loaded, prep), overwrite) as writer:
            with _progress(quiet or not err.is_terminal, source.rows) as advance:
                skipped = runner.dump(extract, source.batches(batch_size), writer, advance)
            writer.finish()

    summary = store.read_summary(output)
    if not quiet:
        for path, reason in skipped:
            err.print(f"skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        out.print(report.summary_json(summary, output), markup=False, highlight=False)
    elif not quiet:
        report.print_table(err, report.summary_table(summary, output))
        err.print(f"wrote {output}", markup=False, highlight=False)


def _root_attrs(loaded, prep):
    import tensorflow as tf

    return {
        **prep.attrs(),
        "tensorprobe_version": __version__,
        "model": loaded.path,
        "model_sha256": loaded.sha256,
        "model_format": loaded.format,
        "loader": loaded.loader,
        "tensorflow_version": tf.__version__,
        "keras_version": loaded.keras.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["tensorprobe", *click.get_current_context().find_root().command.argv],
    }


class _progress:
    """A progress bar on stderr for people at a terminal (samples done, samples per second,
    time left); nothing otherwise."""

    def __init__(self, disabled, total):
        self.disabled, self.total = disabled, total

    def __enter__(self):
        if self.disabled:
            return None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                   TimeRemainingColumn)
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text("" if speed is None else f"{speed:,.1f} samples/s", style="progress.data.speed")

        self.progress = Progress(
            "dumping", BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
            console=err, transient=True,
        )
        self.progress.start()
        task = self.progress.add_task("dump", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if not self.disabled:
            self.progress.stop()


def _terminate(signum, frame):
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the partial output is removed."""
    raise errors.Terminated


def main():
    cli(prog_name="tensorprobe")
