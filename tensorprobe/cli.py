"""The command line: parse, call the core, render. No model logic lives here.

TensorFlow and Keras are imported only inside commands that load a model, so `--help`,
`--version` and usage errors stay fast.
"""

import contextlib
import functools
import os
import signal
import sys

import click

from tensorprobe import errors
from tensorprobe.version import __version__
from tensorprobe.console import err, out, quiet_native_stderr


class TensorprobeGroup(click.Group):
    """Turns every failure into one `error:` line and an exit status a script can branch on:
    0 ok, 1 run-time failure, 2 usage error, 130 interrupted, 143 terminated. `--debug` (or
    TENSORPROBE_DEBUG=1) shows the traceback before that line; the status stays the same."""

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
        except click.exceptions.NoArgsIsHelpError as e:  # bare `tensorprobe`: the help, as it is
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
            self._fail(e.format_message() + hint, e.exit_code)
        except errors.TensorprobeError as e:
            self._fail(str(e), e.exit_code)
        except KeyboardInterrupt as e:  # outside a command (click's own parsing)
            _error("interrupted")
            sys.exit(errors.TERMINATED if isinstance(e, errors.Terminated) else errors.INTERRUPTED)
        if isinstance(rv, int) and not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def _fail(self, message, status):
        """The `error:` line (after the traceback with --debug) and the exit status."""
        if self.debug:
            import traceback

            sys.stderr.write(traceback.format_exc())
        _error(message)
        sys.exit(status)

    def invoke(self, ctx):
        store = sys.modules.get("tensorprobe.store")
        if store is not None:  # a command run before in this process (tests) leaves nothing behind
            store.new_run()
        # Catch Ctrl-C here, before click turns it into Abort with a stray blank line.
        try:
            with errors.cli_words():  # messages name --layer, not the API's `layers`
                return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise errors.Interrupted(isinstance(e, errors.Terminated)) from e


def _env_debug():
    return os.environ.get("TENSORPROBE_DEBUG", "") not in ("", "0")


def _error(message):
    """One line, whatever the message holds (library messages often span several)."""
    err.print(f"error: {' '.join(str(message).split())}", markup=False, highlight=False, soft_wrap=True)


@click.group(cls=TensorprobeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tensorprobe")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's own log lines.")
@click.pass_context
def cli(ctx, debug):
    """Look inside Keras models, SavedModels, frozen graphs and TFLite files: list their layers and tensors,
    dump any layer's activations or any graph tensor to HDF5, summarise, diff and plot dumps,
    and compare two models layer by layer.

    \b
      tensorprobe layers model.keras
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      tensorprobe dump -m model.h5 --layer vgg16/block1_conv2 -o acts.h5 *.npy
      tensorprobe tensors saved_model_dir --op Relu
      tensorprobe summary acts.h5
      tensorprobe diff golden.h5 acts.h5 --atol 1e-4
      tensorprobe compare model.keras saved_model_dir input.npy
    """
    if debug:
        ctx.command.debug = True


def model_options(f):
    f = click.option(
        "--unsafe", is_flag=True,
        help="Allow loading Lambda layers that hold Python code (runs that code; trusted files only).",
    )(f)
    f = click.option(
        "--custom-objects", "custom_objects", multiple=True, metavar="FILE.py",
        type=click.Path(exists=True, dir_okay=False),
        help="Import FILE.py (runs it) for the custom layers, models and functions the model uses. Repeatable.",
    )(f)
    return f


def storage_options(f):
    """--dtype, --reduce, --compression; collected into one `storage` argument."""
    options = [
        click.option("--dtype", "store_dtype", type=click.Choice(["float16", "float32"]),
                     help="Store floating-point values in this dtype (default: as computed)."),
        click.option("--reduce", "reduce_", type=click.Choice(["none", "mean", "max"]), default="none",
                     show_default=True, help="Pool each output over its spatial axes: one value per channel."),
        click.option("--compression", default="none", show_default=True, metavar="gzip[:LEVEL]|lzf|none",
                     help="HDF5 compression of the datasets."),
    ]

    def collect(store_dtype, reduce_, compression, **kwargs):
        from tensorprobe.probe import Storage, parse_compression

        storage = Storage(store_dtype, None if reduce_ == "none" else reduce_, parse_compression(compression))
        return f(storage=storage, **kwargs)

    return _with_options(collect, f, options)


def _with_options(collect, f, options):
    functools.update_wrapper(collect, f)  # keeps the options already attached to f
    for option in reversed(options):
        collect = option(collect)
    return collect


def signature_option(f):
    return click.option(
        "--signature", metavar="NAME",
        help="The SavedModel signature to use (default: serving_default, or the only one).",
    )(f)


def gradient_options(f):
    """--gradients and its target; collected into one `gradients` argument (None without it)."""
    options = [
        click.option("--gradients", "want", is_flag=True,
                     help="Also store the gradient of the target w.r.t. each selected output."),
        click.option("--target", default="top", show_default=True, metavar="TARGET",
                     help="class:K, top (the predicted class's score), sum, or loss:NAME (a Keras loss)."),
        click.option("--labels", type=click.Path(exists=True, dir_okay=False),
                     help="Labels .npy for --target loss:NAME, one row per sample."),
        click.option("--target-output", metavar="NAME", help="The model output the target is taken from."),
    ]

    def collect(**kwargs):
        want, target, labels, output = (kwargs.pop(k) for k in ("want", "target", "labels", "target_output"))
        source = click.get_current_context().get_parameter_source
        given = [f"--{n.replace('_', '-')}" for n in ("target", "labels", "target_output")
                 if source(n) != click.core.ParameterSource.DEFAULT]
        if not want:
            if given:
                raise click.UsageError(f"{given[0]} needs --gradients")
            return f(gradients=None, **kwargs)
        return f(gradients=(target, labels, output), **kwargs)

    return _with_options(collect, f, options)


def _debug():
    return getattr(click.get_current_context().find_root().command, "debug", False)


def _load(model_path, unsafe, custom_objects=(), signature=None, layers=True, raw_quantized=False):
    from tensorprobe import api

    return api.open_model(model_path, custom_objects, unsafe, signature, layers, raw_quantized)


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of layers to stdout.")
@click.option("--filter", "pattern", metavar="REGEX", help="Keep layers whose path matches REGEX (re.search).")
@signature_option
@model_options
def layers(model, as_json, pattern, signature, unsafe, custom_objects):
    """List every layer of MODEL, nested models expanded into paths. MODEL is a .keras or
    .h5 file, a SavedModel folder, a frozen graph (.pb, .pbtxt) or a .tflite file; the layers
    of a graph are its name scopes.

    \b
      tensorprobe layers model.keras
      tensorprobe layers model.h5 --filter 'block1'
      tensorprobe layers model.keras --json | jq '.[].path'
      tensorprobe layers saved_model_dir --signature serving_default
    """
    from tensorprobe import report, text

    regex = text.regex(pattern, "--filter")
    with quiet_native_stderr(not _debug()):
        loaded = _load(model, unsafe, custom_objects, signature)
        info = loaded.describe()
    if not info.layers:
        err.print(f"{model}: no layer structure: the graph's name scopes hold no Keras layers "
                  f"(`tensorprobe tensors {model}` lists its tensors)", markup=False, highlight=False,
                  soft_wrap=True)
        if as_json:
            out.print("[]", markup=False, highlight=False)
        return
    if regex is not None:
        info.layers = [layer for layer in info.layers if regex.search(layer.path)]
    if as_json:
        out.print(report.layers_json(info), markup=False, highlight=False)
        return
    report.print_table(out, report.layers_table(info, f"{model}: {loaded.backend.title(info.name)}"),
                       **report.LAYER_COLUMNS)
    for line in report.model_footer(info):
        out.print(line, markup=False, highlight=False)


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--filter", "pattern", metavar="REGEX", help="Keep tensors whose name matches REGEX (re.search).")
@click.option("--op", "op_types", multiple=True, metavar="TYPE",
              help="Keep tensors made by ops of this type (Relu, BiasAdd, ...; any case). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of tensors to stdout.")
@signature_option
@model_options
def tensors(model, pattern, op_types, as_json, signature, unsafe, custom_objects):
    """List the tensors of MODEL's graph in topological order: name, op type, dtype, shape.

    For a SavedModel folder, the signature's graph with functions inlined and variables
    frozen; for a frozen graph (.pb, .pbtxt), the graph itself; for a .keras or .h5 file, the
    model's forward pass traced in inference mode.
    `dump --tensor NAME` stores any of them.

    \b
      tensorprobe tensors saved_model_dir
      tensorprobe tensors model.keras --op BiasAdd --op Relu
      tensorprobe tensors saved_model_dir --filter 'block1_conv2' --json | jq '.[].name'
    """
    from tensorprobe import report, text

    regex = text.regex(pattern, "--filter")
    with quiet_native_stderr(not _debug()):
        from tensorprobe.backends.tfgraph.tensors import filter_tensors

        graph = _load(model, unsafe, custom_objects, signature, layers=False).backend.tensor_graph
    shown = filter_tensors(graph, regex, op_types)
    if as_json:
        out.print(report.tensors_json(shown), markup=False, highlight=False)
        return
    report.print_table(out, report.tensors_table(shown, f"{model}: {graph.source}"), **report.TENSOR_COLUMNS)
    for line in report.tensors_footer(graph, len(shown)):
        out.print(line, markup=False, highlight=False)


def _parsed(parse):
    """A click callback that parses an option's value with `parse`, a usage error otherwise."""

    def one(ctx, param, value):
        try:
            return parse(value)
        except ValueError as e:  # the value at fault, as typed (one of a repeated option's)
            raise click.BadParameter(f"'{value}': {e}", ctx, param) from None

    def callback(ctx, param, value):
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(one(ctx, param, v) for v in value)
        return one(ctx, param, value)

    return callback


def hdf5_output(ctx, param, value):
    """A click callback: refuses an HDF5 --output named like another format's file (acts.npy)."""
    from tensorprobe import store

    if value is not None:
        store.check_hdf5_name(value, param.opts[-1])
    return value


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
              type=click.Path(exists=True), required=True, help="The model: .keras, .h5, .tflite, a SavedModel folder, a frozen graph (.pb, .pbtxt).")
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="A layer name, nested path (vgg16/block1_conv2) or index (3, 1.3). Repeatable.")
@click.option("--match", metavar="REGEX", help="Also select every layer whose path matches REGEX.")
@click.option("--all", "all_layers", is_flag=True, help="Select every layer (input layers aside).")
@click.option("-t", "--tensor", "tensor_names", multiple=True, metavar="NAME",
              help="A graph tensor (`tensorprobe tensors` lists them), stored under /tensors. Repeatable.")
@click.option("--tensor-match", metavar="REGEX", help="Also select every graph tensor whose name matches REGEX.")
@click.option("-o", "--output", default="activations.h5", show_default=True, type=click.Path(),
              callback=hdf5_output, help="The HDF5 file to write (.h5 or .hdf5).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("-b", "--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Samples per forward pass.")
@input_options
@click.option("--json", "as_json", is_flag=True, help="Print the dump summary as JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--fail-on-nonfinite", is_flag=True,
              help="Exit 1 after the dump when any dataset holds NaN or Inf.")
@click.option("--training", is_flag=True,
              help="Run in training mode (Dropout on, BatchNormalization on batch statistics).")
@click.option("--jit", is_flag=True, help="Compile the extraction with XLA.")
@click.option("--raw-quantized", is_flag=True,
              help="TFLite: store quantized tensors as their integers, not dequantized float32.")
@click.option("--max-bytes", metavar="SIZE", help="Refuse a dump larger than SIZE (e.g. 500M, 2G).")
@click.option("--shard", metavar="K/N", envvar="TENSORPROBE_SHARD", show_envvar=True,
              help="Dump only shard K (from 0) of N: rows [K*R//N, (K+1)*R//N) of the R input rows.")
@click.option("--resume", is_flag=True,
              help="Skip the dump when OUTPUT is already this shard's (or dump's) complete output.")
@storage_options
@gradient_options
@signature_option
@model_options
def dump(inputs, model, layer_names, match, all_layers, tensor_names, tensor_match, output, overwrite,
         batch_size, as_json, quiet, fail_on_nonfinite, training, jit, raw_quantized, max_bytes, shard, resume,
         storage,
         gradients, signature, unsafe, custom_objects, **input_settings):
    """Compute the outputs of the chosen layers (or graph tensors) for INPUTS and write them
    to HDF5. The model is a .keras, .h5 or .tflite file, a SavedModel folder or a frozen graph.

    INPUTS are .npy, .npz and image files (PNG, JPEG, BMP, GIF), folders (searched
    recursively), quoted glob patterns, @LIST files (one path a line) and - (a .npy on
    stdin); a string input also takes .txt files (one UTF-8 sample a line). An array whose
    shape is the model's input shape is one sample; otherwise its first axis is the batch.
    Images are resized to the model's input size. A model with several inputs takes .npz
    files whose keys are its input names, or --input NAME=PATH.

    Inputs must be regular files, and what their headers declare is bounded: raise a limit
    with TENSORPROBE_MAX_IMAGE_PIXELS (pixels of an image or --size; default 178956970),
    TENSORPROBE_MAX_ARRAY_BYTES (one array's data; 16G), TENSORPROBE_MAX_UNPACKED (what a
    .keras or .npz archive unpacks to at any ratio; 256M), TENSORPROBE_MAX_INFLATE_RATIO
    (the most it inflates beyond that; 200) or TENSORPROBE_MAX_LIST_BYTES (an @LIST; 64M);
    0 turns one off.

    \b
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      tensorprobe dump -m model.keras -l block1_conv2 --preprocess vgg16 photos/
      tensorprobe dump -m model.keras -l fc1 --scale 1/255 'photos/**/*.jpg' @more.txt
      tensorprobe dump -m two_inputs.keras -l concat --input image=photos/ --input meta=meta.npy
      TENSORPROBE_MODEL=model.h5 tensorprobe dump -l vgg16/block1_conv2 -l 3 a.npy b.npy
      tensorprobe dump -m model.keras --match 'conv' -o convs.h5 --json input.npy | jq
      tensorprobe dump -m saved_model_dir --tensor-match 'block1_conv2_1/BiasAdd' input.npy
      tensorprobe dump -m model.keras --all --shard 2/8 -o part-2.h5 photos/   # then: merge
    """
    from tensorprobe import api, pipeline, store, text
    from tensorprobe import shard as sharding

    target, labels, target_output = gradients if gradients is not None else (None, None, None)
    selection = pipeline.Selection(layer_names, match, all_layers, tensor_names, tensor_match, target,
                              target_output, labels, training, jit)
    named_inputs = input_settings.pop("named_inputs")
    prep = _preparation(**input_settings)
    selection.check(prep.skip_bad)
    if max_bytes is not None:
        text.parse_size(max_bytes)  # a usage error now, not after the model has loaded
    if shard is not None:
        from_env = click.get_current_context().get_parameter_source("shard").name == "ENVIRONMENT"
        shard = sharding.parse(shard, sharding.ENV if from_env else "--shard")
    runner_limits()  # before TensorFlow starts its threads
    _stop_on_signals(store)

    def on_size(needed, free):
        if not quiet and err.is_terminal:  # beside the progress bar; CI logs stay clean
            err.print(f"writing about {store.mib(needed)} to {output} ({store.mib(free)} free)",
                      markup=False, highlight=False, soft_wrap=True)

    progress = None if quiet or not err.is_terminal else api.progress_bar(err)
    command = ["tensorprobe", *click.get_current_context().find_root().command.argv]
    with _success_once_written(store, output):
        with quiet_native_stderr(not _debug()):
            model_ = _load(model, unsafe, custom_objects, signature, selection.wants_layers, raw_quantized)
            job = pipeline.Job(batch_size, progress, click.get_binary_stream("stdin"))
            result = pipeline.run_dump(model_.backend, list(inputs), named_inputs, output, selection, prep, storage,
                                       job, overwrite=overwrite, shard=shard, resume=resume, max_bytes=max_bytes,
                                       attrs={"command": command}, on_size=on_size)
        _report_dump(result, output, shard, as_json, quiet, fail_on_nonfinite)


def _report_dump(result, output, shard, as_json, quiet, fail_on_nonfinite):
    if result.resumed:
        what = "shard" if shard is not None else "dump"
        err.print(f"skipped: '{output}' is already this {what}'s complete output (--resume)",
                  markup=False, highlight=False, soft_wrap=True)
        if as_json:
            _print_summary(result.summary, output, as_json, console=err, provenance=False)
        return
    if not quiet:
        for path, reason in result.skipped:
            err.print(f"skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if as_json or not quiet:
        _print_summary(result.summary, output, as_json, console=err, provenance=False)
        if not as_json:
            err.print(f"wrote {output}", markup=False, highlight=False)
    if fail_on_nonfinite and result.nonfinite:
        sources = summary_sources(output, [row for *_, row in result.nonfinite])
        for (path, nans, infs, row), source_name in zip(result.nonfinite, sources):
            _error(f"{path} holds {nans} NaN and {infs} Inf values, first in sample {row} ({source_name})")
        sys.exit(errors.FAILURE)


def _stop_on_signals(store):
    """Ctrl-C (SIGINT) and SIGTERM stop the command (see _terminate), and the store remembers
    it, so that no output is moved into place after an interrupt Python dropped."""
    store.new_run()
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def _success_once_written(store, output):
    """An interrupt that comes once `output` was moved into place ends the command as the
    success it is: `wrote OUTPUT` and exit 0. Before that, it stops it (exit 130 or 143) with
    `output` as it was."""
    try:
        yield
    except KeyboardInterrupt:
        if not store.completed(output):
            raise
        err.print(f"wrote {output} (interrupted once it was complete)", markup=False, highlight=False,
                  soft_wrap=True)


def runner_limits():
    from tensorprobe import runner

    runner.limit_malloc_arenas()


@cli.command()
@click.argument("shards", metavar="SHARD.h5...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), callback=hdf5_output,
              help="The merged HDF5 file to write (.h5 or .hdf5).")
@click.option("--copy", is_flag=True,
              help="Copy the rows into a self-contained file instead of virtual datasets that read the shards.")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def merge(shards, output, copy, overwrite, quiet):
    """Join the shard files of one `dump --shard K/N` job, all N of them in any order, into
    one dump that reads like a single one (`summary`, `diff`, `plot`). Every dataset becomes
    an HDF5 virtual dataset over the shards, in shard order (they must stay beside the merged
    file: paths are stored relative to its folder), or a real copy with --copy. Statistics are
    combined from the shards' own; the data is not read.

    \b
      tensorprobe merge part-*.h5 -o all.h5
      tensorprobe merge --copy part-0.h5 part-1.h5 part-2.h5 -o all.h5
    """
    from tensorprobe import merge as merging
    from tensorprobe import store

    _stop_on_signals(store)
    with _success_once_written(store, output):
        rows, count = merging.merge(shards, output, copy, overwrite)
        if not quiet:
            err.print(f"wrote {output}: {rows} rows from {count} shards ({'copied' if copy else 'virtual'})",
                      markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("dump_file", metavar="FILE.h5", type=click.Path(exists=True, dir_okay=False))
@click.option("-l", "--layer", required=True, metavar="PATH",
              help="The dataset under /activations (vgg16/block1_conv2), or a unique suffix (block1_conv2).")
@click.option("-s", "--sample", "samples", multiple=True, type=click.IntRange(min=0), metavar="I",
              help="The sample row (default 0). Repeatable for (N, C) layers: one bar chart each.")
@click.option("--channels", metavar="SLICE", help="Channels (units) to show, as a Python slice: 0:16, ::4, 5.")
@click.option("--hist", is_flag=True, help="A histogram of every value of the layer, all samples.")
@click.option("--heatmap", is_flag=True, help="Grad-CAM over the input image (needs a dump made with --gradients).")
@click.option("--over-steps", is_flag=True,
              help="A training file's (ProbeCallback's) mean, std and zeros fraction of the layer against the step.")
@click.option("--bins", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Bins of --hist.")
@click.option("--dpi", default=100, show_default=True, type=click.IntRange(20, 1200), help="Pixels per inch.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The picture to write: .png, .svg or .pdf (by extension; none means PNG).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
def plot(dump_file, layer, samples, channels, hist, heatmap, over_steps, bins, dpi, output, overwrite):
    """Draw one layer of a dump: its feature maps, units, a histogram or a Grad-CAM heatmap.

    (N, H, W, C) layers give a grid of the channel maps of one sample, each scaled to its own
    range; (N, C) layers a bar chart of the units per sample. Needs the `plot` extra:
    pip install 'tensorprobe[plot]'.

    \b
      tensorprobe plot acts.h5 --layer block1_conv2 --sample 1 -o maps.png
      tensorprobe plot acts.h5 --layer fc1 -s 0 -s 1 -o units.svg
      tensorprobe plot acts.h5 --layer block1_conv2 --hist -o hist.png
      tensorprobe plot acts.h5 --layer block3_conv3 --heatmap -o cam.pdf
      tensorprobe plot probe.h5 --layer conv1 --over-steps -o conv1.png
    """
    from tensorprobe.plot import Request, render

    given = [name for name, on in (("--hist", hist), ("--heatmap", heatmap), ("--over-steps", over_steps)) if on]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} draw different pictures; give one")
    kind = "hist" if hist else "heatmap" if heatmap else "steps" if over_steps else None
    request = Request(dump_file, layer, samples, channels, kind, bins, dpi, output, overwrite)
    signal.signal(signal.SIGTERM, _terminate)
    for note in render(request):
        err.print(note, markup=False, highlight=False)
    err.print(f"wrote {output}", markup=False, highlight=False)


def summary_sources(output, rows):
    import h5py

    with h5py.File(output, "r") as f:
        return [f["inputs/source"].asstr()[row] for row in rows]


def dump_file_options(f):
    """Options shared by the commands that read dumps."""
    f = click.option(
        "--allow-incomplete", is_flag=True,
        help="Read a dump whose 'complete' attribute is not true (an interrupted or running dump), flagged as such.",
    )(f)
    return f


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object to stdout.")
@dump_file_options
def summary(file, as_json, allow_incomplete):
    """Show what a dump holds: where it comes from, then every dataset in model order with its
    shape, dtype, size and statistics. Reads only attributes and metadata, so it is fast.

    \b
      tensorprobe summary activations.h5
      tensorprobe summary acts.h5 --json | jq '.datasets[] | {path, max}'
      tensorprobe summary --allow-incomplete .acts.h5.x1y2z3.partial
    """
    from tensorprobe import store

    result = store.read_summary(file, allow_incomplete)
    if not store.is_complete(result["attrs"]):
        _warn_incomplete(file)
    _print_summary(result, file, as_json, console=out, provenance=True)


def _print_summary(summary, path, as_json, console, provenance):
    from tensorprobe import report

    if as_json:
        out.print(report.summary_json(summary, path), markup=False, highlight=False)
    else:
        report.print_summary(console, summary, path, provenance)


def _warn_incomplete(path):
    err.print(f"warning: '{path}' is an incomplete dump, read because of --allow-incomplete",
              markup=False, highlight=False, soft_wrap=True)


def _tolerance(ctx, param, value):
    import math

    if value is None:  # compare: not given
        return value
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"{value!r} is not a finite number >= 0", ctx, param)
    return value


@cli.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option("--rtol", default=1e-5, show_default=True, type=float, callback=_tolerance,
              help="Relative tolerance: values match when |a - b| <= atol + rtol * |b|.")
@click.option("--atol", default=1e-8, show_default=True, type=float, callback=_tolerance,
              help="Absolute tolerance (numpy.allclose's default and rule).")
@click.option("--only", metavar="REGEX", help="Compare only the datasets whose path matches REGEX (re.search).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object to stdout.")
@dump_file_options
@click.pass_context
def diff(ctx, a, b, rtol, atol, only, as_json, allow_incomplete):
    """Compare two dumps dataset by dataset and name the first dataset, in model order, that
    differs. Exit status 0 when everything matches, 1 when anything differs or is missing.

    Values match when |a - b| <= atol + rtol * |b| (B is the reference, as in numpy.allclose),
    or when both are NaN, or the same infinity. Datasets are read a block of rows at a time.

    \b
      tensorprobe diff golden.h5 new.h5 --atol 1e-4
      tensorprobe diff a.h5 b.h5 --only '^vgg16/' --json | jq .first_difference
    """
    from tensorprobe import dumpdiff, report

    result = dumpdiff.diff_dumps(a, b, rtol, atol, only, allow_incomplete)
    for path, side in ((a, "a"), (b, "b")):
        if not result["complete"][side]:
            _warn_incomplete(path)
    if as_json:
        out.print(report.diff_json(result), markup=False, highlight=False)
    else:
        report.print_diff(out, result)
    ctx.exit(0 if result["match"] else errors.FAILURE)


def _pairing(ctx, param, values):
    pairs = []
    for value in values:
        a, sep, b = value.partition("=")
        if not sep or not a or not b:
            raise click.BadParameter(f"'{value}': expected A_PATH=B_PATH", ctx, param)
        pairs.append((a, b))
    return tuple(pairs)


@cli.command()
@click.argument("model_a", type=click.Path(exists=True))
@click.argument("model_b", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="Compare only this layer of MODEL_A (and its pair in MODEL_B). Repeatable.")
@click.option("--match", metavar="REGEX", help="Compare only the layers of MODEL_A whose path matches REGEX.")
@click.option("--pair", "pairs", multiple=True, metavar="A_PATH=B_PATH", callback=_pairing,
              help="Pair these two layers (where names differ). Repeatable.")
@click.option("--rtol", type=float, callback=_tolerance,
              help="Judge by numpy's rule |a - b| <= atol + rtol * |b| (B is the reference), with this rtol "
                   "(default 1e-5 when only --atol is given).")
@click.option("--atol", type=float, callback=_tolerance,
              help="The same rule with this atol (default 1e-8 when only --rtol is given).")
@click.option("--metric", metavar="CRITERION",
              help="scaled:X (max |A - B| <= X max |B|), snr:DB, cosine:X or allclose. Default: scaled:1e-4 "
                   "for two float32 models, snr:20 where either is quantized or half precision.")
@click.option("-b", "--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Samples per forward pass.")
@input_options
@click.option("--save-a", type=click.Path(), callback=hdf5_output, help="Also write MODEL_A's outputs to this dump.")
@click.option("--save-b", type=click.Path(), callback=hdf5_output, help="Also write MODEL_B's outputs to this dump.")
@click.option("--plot", "picture", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw each pair's error in model order (png, svg or pdf; needs the plot extra).")
@click.option("--node-data", "node_data", type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Also write each pair's metric as Model Explorer node data for MODEL_B's graph.")
@click.option("--overwrite", is_flag=True, help="Replace --save-a/--save-b/--plot/--node-data files that exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (the exit status tells).")
@model_options
@click.pass_context
def compare(ctx, model_a, model_b, inputs, layer_names, match, pairs, rtol, atol, metric, batch_size, save_a,
            save_b, picture, node_data, overwrite, as_json, quiet, unsafe, custom_objects, **input_settings):
    """Run MODEL_A and MODEL_B on the same INPUTS and compare the outputs of the layers both
    have, paired by path, in model order; name the first divergence: the first pair out of
    tolerance. Any two formats tensorprobe reads (.keras vs its SavedModel export, Keras 2 vs
    Keras 3, a float or int8 TFLite file, two versions of a model). Exit status 0 when every
    pair is within tolerance, 1 when one is not. Inputs and their options as for `dump`;
    MODEL_B's inputs are fed by name (by position, with a warning, when the names differ).

    \b
      tensorprobe compare model.keras model_export/ x.npy
      tensorprobe compare old.keras new.keras photos/ --preprocess vgg16 --atol 1e-4
      tensorprobe compare model.keras quantized/ x.npy --metric snr:30 --json | jq .first_divergence
      tensorprobe compare a.keras b.keras x.npy --pair dense=dense_renamed
    """
    from tensorprobe import api, modelcompare, pipeline, report, text

    criterion = modelcompare.parse_metric(metric, rtol, atol)  # before any model is loaded
    text.regex(match, "--match")
    named_inputs = input_settings.pop("named_inputs")
    prep = _preparation(**input_settings)
    if picture is not None:  # before the work: a wrong name or an existing file
        from tensorprobe import plot, store
        from tensorprobe.plot import figures

        plot.picture_format(picture, "--plot")
        store.check_output(picture, overwrite, "--plot")
        figures.matplotlib_figure()
    if node_data is not None:
        from tensorprobe import store

        if not node_data.lower().endswith(".json"):
            raise errors.UsageError(f"--node-data '{node_data}': name it .json (Model Explorer's node data)")
        store.check_output(node_data, overwrite, "--node-data")
    runner_limits()
    signal.signal(signal.SIGTERM, _terminate)
    progress = None if quiet or not err.is_terminal else api.progress_bar(err)
    with quiet_native_stderr(not _debug()):
        a = _load(model_a, unsafe, custom_objects)
        b = _load(model_b, unsafe, custom_objects)
        job = pipeline.Job(batch_size, progress, click.get_binary_stream("stdin"))
        result = pipeline.run_compare(a.backend, b.backend, list(inputs), named_inputs, prep, job, layers=layer_names,
                                      match=match, pairs=pairs, criterion=criterion, save_a=save_a, save_b=save_b,
                                      overwrite=overwrite)
    if result["inputs_by_position"] and not quiet:
        err.print(f"warning: {result['inputs_by_position']}", markup=False, highlight=False, soft_wrap=True)
    if picture is not None:
        plot.compare_picture(result, picture, overwrite)
    if node_data is not None:
        import json

        from tensorprobe import store

        with store.atomic_output(node_data, overwrite, "--node-data") as tmp:
            tmp.write_text(json.dumps(modelcompare.node_data(result), indent=2))
    if as_json:
        out.print(report.compare_json(result), markup=False, highlight=False)
    elif not quiet:
        report.print_compare(out, result)
        if picture is not None:
            err.print(f"wrote {picture}", markup=False, highlight=False, soft_wrap=True)
    ctx.exit(0 if result["match"] else errors.FAILURE)


def _terminate(signum, frame):
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C (SIGINT), so the partial output is
    removed; where the store is in use it also remembers the interrupt (store.request_stop)."""
    stop = KeyboardInterrupt if signum == signal.SIGINT else errors.Terminated
    store = sys.modules.get("tensorprobe.store")
    if store is not None:
        store.request_stop(stop)
    raise stop


def main():
    try:
        cli(prog_name="tensorprobe")
    except SystemExit as e:
        store = sys.modules.get("tensorprobe.store")
        if store is not None and store.hdf5_damaged():
            # HDF5 would crash while shutting down after a failed write: leave without it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        # The outcome is decided: an interrupt while the process shuts down (TensorFlow's
        # threads and exit handlers take up to a second, after Python has put the default
        # handlers back) must not kill it by the signal after a dump that succeeded.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        raise
