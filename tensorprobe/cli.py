"""The command line: parse, call the core, render. No model logic lives here.

TensorFlow and Keras are imported only inside commands that load a model, so `--help`,
`--version` and usage errors stay fast.
"""

import functools
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
    """Look inside Keras models and SavedModels: list their layers and tensors, dump any
    layer's activations or any graph tensor to HDF5.

    \b
      tensorprobe layers model.keras
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      tensorprobe dump -m model.h5 --layer vgg16/block1_conv2 -o acts.h5 *.npy
      tensorprobe tensors saved_model_dir --op Relu
    """
    if debug:
        ctx.command.debug = True


def model_options(f):
    f = click.option(
        "--unsafe", is_flag=True,
        help="Allow loading Lambda layers that hold Python code (runs that code; trusted files only).",
    )(f)
    return f


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
        from tensorprobe.probe import parse_target

        parsed = parse_target(target)
        if (parsed.kind == "loss") != (labels is not None):
            raise click.UsageError("--target loss:NAME and --labels go together")
        return f(gradients=(parsed, labels, output), **kwargs)

    functools.update_wrapper(collect, f)  # keeps the options already attached to f
    for option in reversed(options):
        collect = option(collect)
    return collect


def _debug():
    return getattr(click.get_current_context().find_root().command, "debug", False)


def _load(model_path, unsafe, signature=None, layers=True):
    """(LoadedModel, its graph of layers); the graph is None when `layers` is False (then a
    Keras 2 SavedModel is not rebuilt with tf_keras either)."""
    from tensorprobe.graph import unroll
    from tensorprobe.models import load_model

    loaded = load_model(model_path, signature=signature, keras_model=layers, unsafe=unsafe)
    if not layers:
        return loaded, None
    if loaded.model is None:  # a SavedModel that holds only a graph: its layers are name scopes
        from tensorprobe import scopes, tensors

        return loaded, scopes.scope_graph(tensors.tensor_graph(loaded))
    return loaded, unroll(loaded.model, loaded.keras)


def _is_scope_graph(graph):
    from tensorprobe.scopes import ScopeGraph

    return isinstance(graph, ScopeGraph)


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of layers to stdout.")
@click.option("--filter", "pattern", metavar="REGEX", help="Keep layers whose path matches REGEX (re.search).")
@signature_option
@model_options
def layers(model, as_json, pattern, signature, unsafe):
    """List every layer of MODEL, nested models expanded into paths. MODEL is a .keras or
    .h5 file or a SavedModel folder (layers of a graph-only SavedModel are its name scopes).

    \b
      tensorprobe layers model.keras
      tensorprobe layers model.h5 --filter 'block1'
      tensorprobe layers model.keras --json | jq '.[].path'
      tensorprobe layers saved_model_dir --signature serving_default
    """
    import re

    from tensorprobe import report
    from tensorprobe.layers import describe

    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as e:
        raise errors.UsageError(f"--filter '{pattern}': not a valid regular expression ({e})") from e
    with quiet_native_stderr(not _debug()):
        loaded, graph = _load(model, unsafe, signature)
        if _is_scope_graph(graph):
            from tensorprobe import scopes

            info = scopes.describe(graph)
        else:
            info = describe(loaded, graph)
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
    report.print_table(out, report.layers_table(info, f"{model}: {_title(info.name, loaded)}"))
    for line in report.model_footer(info):
        out.print(line, markup=False, highlight=False)


def _title(name, loaded):
    """'transfer (keras 3.x)'; for a graph, 'transfer, signature serving_default (tensorflow 2.x)'."""
    parts = [name] if name else []
    if loaded.model is None:
        parts.append(f"signature {loaded.signature.name}")
    return f"{', '.join(parts)} ({loaded.loader})" if parts else loaded.loader


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--filter", "pattern", metavar="REGEX", help="Keep tensors whose name matches REGEX (re.search).")
@click.option("--op", "op_types", multiple=True, metavar="TYPE",
              help="Keep tensors made by ops of this type (Relu, BiasAdd, ...; any case). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of tensors to stdout.")
@signature_option
@model_options
def tensors(model, pattern, op_types, as_json, signature, unsafe):
    """List the tensors of MODEL's graph in topological order: name, op type, dtype, shape.

    For a SavedModel folder, the signature's graph with functions inlined and variables
    frozen; for a .keras or .h5 file, the model's forward pass traced in inference mode.
    `dump --tensor NAME` stores any of them.

    \b
      tensorprobe tensors saved_model_dir
      tensorprobe tensors model.keras --op BiasAdd --op Relu
      tensorprobe tensors saved_model_dir --filter 'block1_conv2' --json | jq '.[].name'
    """
    import re

    from tensorprobe import report

    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as e:
        raise errors.UsageError(f"--filter '{pattern}': not a valid regular expression ({e})") from e
    with quiet_native_stderr(not _debug()):
        from tensorprobe.models import load_model
        from tensorprobe.tensors import filter_tensors, tensor_graph

        loaded = load_model(model, signature=signature, keras_model=False, unsafe=unsafe)
        graph = tensor_graph(loaded)
    shown = filter_tensors(graph, regex, op_types)
    if as_json:
        out.print(report.tensors_json(shown), markup=False, highlight=False)
        return
    report.print_table(out, report.tensors_table(shown, f"{model}: {graph.source}"))
    for line in report.tensors_footer(graph, len(shown)):
        out.print(line, markup=False, highlight=False)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--model", "model", envvar="TENSORPROBE_MODEL", show_envvar=True,
              type=click.Path(exists=True), required=True, help="The model file (.keras, .h5).")
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="A layer name, nested path (vgg16/block1_conv2) or index (3, 1.3). Repeatable.")
@click.option("--match", metavar="REGEX", help="Also select every layer whose path matches REGEX.")
@click.option("--all", "all_layers", is_flag=True, help="Select every layer (input layers aside).")
@click.option("-t", "--tensor", "tensor_names", multiple=True, metavar="NAME",
              help="A graph tensor (`tensorprobe tensors` lists them), stored under /tensors. Repeatable.")
@click.option("--tensor-match", metavar="REGEX", help="Also select every graph tensor whose name matches REGEX.")
@click.option("-o", "--output", default="activations.h5", show_default=True, type=click.Path(),
              help="The HDF5 file to write.")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("-b", "--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Samples per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the dump summary as JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--fail-on-nonfinite", is_flag=True,
              help="Exit 1 after the dump when any dataset holds NaN or Inf.")
@gradient_options
@signature_option
@model_options
def dump(inputs, model, layer_names, match, all_layers, tensor_names, tensor_match, output, overwrite,
         batch_size, as_json, quiet, fail_on_nonfinite, gradients, signature, unsafe):
    """Compute the outputs of the chosen layers (or graph tensors) for INPUTS (.npy files) and
    write them to HDF5. The model is a .keras or .h5 file or a SavedModel folder.

    An array whose shape is the model's input shape is one sample; otherwise its first axis
    is the batch. Files are concatenated in the order given.

    \b
      tensorprobe dump -m model.keras --layer block1_conv2 input.npy
      TENSORPROBE_MODEL=model.h5 tensorprobe dump -l vgg16/block1_conv2 -l 3 a.npy b.npy
      tensorprobe dump -m model.keras --match 'conv' -o convs.h5 --json input.npy | jq
      tensorprobe dump -m saved_model_dir --tensor-match 'block1_conv2_1/BiasAdd' input.npy
    """
    from tensorprobe import report, runner, store

    wants_layers = bool(layer_names or match or all_layers)
    wants_tensors = bool(tensor_names or tensor_match)
    if not (wants_layers or wants_tensors):
        raise click.UsageError(
            "nothing selected: give --layer NAME, --match REGEX, --all, --tensor NAME or --tensor-match REGEX"
        )
    if gradients is not None and wants_tensors:
        raise click.UsageError("--gradients works with --layer, --match and --all, not with --tensor")
    store.check_output(output, overwrite)
    for path in inputs:
        if not os.path.exists(path):
            raise errors.UsageError(f"input '{path}' does not exist")
    signal.signal(signal.SIGTERM, _terminate)

    with quiet_native_stderr(not _debug()):
        from tensorprobe import probe
        from tensorprobe.inputs import InputSpec, NpyInputs, open_labels

        from tensorprobe.tensors import TensorPart

        loaded, graph = _load(model, unsafe, signature, layers=wants_layers)
        plan = probe.plan(graph, probe.select(graph, layer_names, match, all_layers)) if wants_layers else None
        tensor_part = TensorPart.build(loaded, graph, tensor_names, tensor_match, plan) if wants_tensors else None
        source = NpyInputs(inputs, _input_spec(graph if wants_layers else tensor_part.graph, InputSpec))
        labels = target = target_origin = None
        if not wants_layers:
            extract = None
        elif _is_scope_graph(graph):
            if gradients is not None:
                raise errors.UsageError(f"--gradients needs a Keras model; {model} holds only a graph")
            extract = graph.extraction_function(plan)
        elif gradients is None:
            extract = probe.extraction_function(graph, plan)
        else:
            target, labels_path, output_name = gradients
            target_origin, output_name = probe.output_origin(graph, output_name)
            plan = probe.with_gradients(plan, target, output_name)
            labels = open_labels(labels_path, source.rows) if labels_path else None
            label_shape = labels.shape[1:] if labels is not None else None
            extract = probe.extraction_function(graph, plan, target, target_origin, label_shape)
        if tensor_part is not None:
            plan, extract = tensor_part.after(plan, extract)
        with store.DumpWriter(output, plan.specs, _root_attrs(loaded), overwrite) as writer:
            with _progress(quiet or not err.is_terminal, source.rows) as advance:
                runner.dump(extract, source, writer, batch_size, advance, labels)
            writer.finish()
        nonfinite = writer.nonfinite()

    summary = store.read_summary(output)
    if as_json:
        out.print(report.summary_json(summary, output), markup=False, highlight=False)
    elif not quiet:
        report.print_table(err, report.summary_table(summary, output))
        err.print(f"wrote {output}", markup=False, highlight=False)
    if fail_on_nonfinite and nonfinite:
        sources = summary_sources(output, [row for *_, row in nonfinite])
        for (path, nans, infs, row), source_name in zip(nonfinite, sources):
            _error(f"{path} holds {nans} NaN and {infs} Inf values, first in sample {row} ({source_name})")
        sys.exit(errors.FAILURE)


def summary_sources(output, rows):
    import h5py

    with h5py.File(output, "r") as f:
        return [f["inputs/source"].asstr()[row] for row in rows]


def _input_spec(graph, InputSpec):
    if len(graph.inputs) != 1:
        raise errors.InputError(
            f"the model has {len(graph.inputs)} inputs; .npy inputs feed a single-input model"
        )
    t = graph.inputs[0]
    dtype = getattr(t.dtype, "name", None) or str(t.dtype)
    name = getattr(t, "name", "input")
    return InputSpec(name, tuple(None if d is None else int(d) for d in t.shape[1:]), dtype)


def _root_attrs(loaded):
    import tensorflow as tf

    return {
        "tensorprobe_version": __version__,
        "model": loaded.path,
        "model_sha256": loaded.sha256,
        "model_format": loaded.format,
        "loader": loaded.loader,
        "tensorflow_version": tf.__version__,
        "keras_version": loaded.keras.__version__ if loaded.keras is not None else "",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["tensorprobe", *click.get_current_context().find_root().command.argv],
    }


class _progress:
    """A progress bar on stderr for people at a terminal; nothing otherwise."""

    def __init__(self, disabled, total):
        self.disabled, self.total = disabled, total

    def __enter__(self):
        if self.disabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress(
            "dumping", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
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
