"""The options several commands share, as decorators that bundle their values into records
(sqlite-utils' `output_options`, carried one step further): a command function takes a
`selection`, `inputs`, `job`, `storage` or `model` argument instead of a dozen flags.

`record(name, build, *options)` is the one mechanism: it attaches `options` where the
decorator stands (their place in `--help`) and calls the command with `name=build(...)`, fed
the values of the parameters `build` names. Those may be options attached by other decorators
(--training, --gradients sit further down dump's help than --layer), and a parameter of
`build` with a default may be missing from a command (`--raw-quantized` from `layers`).
Records are built in the order of the decorators (top down), before the command's body runs,
with no model loaded: what they check (--compression, --size) fails at once.

Importing this module must stay light: `tensorprobe --help` imports no TensorFlow.
"""

import functools
import inspect
from dataclasses import dataclass

import click


def record(name, build, *options):
    """A decorator: `options` attached here, and one `name` argument for the command,
    build(**values) of the parameters `build` names (popped, so the command does not get them)."""
    parameters = inspect.signature(build).parameters
    required = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty]
    optional = [n for n, p in parameters.items() if p.default is not inspect.Parameter.empty]

    def decorator(f):
        def collect(**kwargs):
            values = {n: kwargs.pop(n) for n in required}
            values.update((n, kwargs.pop(n)) for n in optional if n in kwargs)
            return f(**{name: build(**values)}, **kwargs)

        functools.update_wrapper(collect, f)  # keeps the options already attached to f
        for option in reversed(options):
            collect = option(collect)
        return collect

    return decorator


def attach(*options):
    """A decorator attaching `options` whose values a record(...) of the same command collects."""

    def decorator(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorator


def given(*names):
    """The options among `names` (parameter names) given on the command line or by the
    environment, as --flags, in that order."""
    source = click.get_current_context().get_parameter_source
    return [f"--{n.replace('_', '-')}" for n in names if source(n) != click.core.ParameterSource.DEFAULT]


def parsed(parse):
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


def tolerance(ctx, param, value):
    """A click callback for --rtol/--atol: a finite number >= 0 (None: not given)."""
    import math

    if value is None:
        return value
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"{value!r} is not a finite number >= 0", ctx, param)
    return value


def error_stat_option(what):
    """--error-stat: what the tolerances apply to (dumpdiff.parse_error_stat checks it)."""
    return click.option(
        "--error-stat", metavar="STAT",
        help=f"What --rtol/--atol apply to: elemwise (each element, the default), or max, mean, median or "
             f"quantile:Q of each {what}'s errors: within when that statistic of |a - b| <= atol or of "
             f"|a - b| / |b| <= rtol (Polygraphy's --check-error-stat).")


def overwrite_option(help="Replace the output file if it exists."):
    return click.option("--overwrite", is_flag=True, help=help)


def signature_option(f):
    return click.option(
        "--signature", metavar="NAME",
        help="The SavedModel signature to use (default: serving_default, or the only one).",
    )(f)


# ---- the model: --unsafe, --custom-objects (and --signature, --raw-quantized) ---------------

@dataclass(frozen=True)
class ModelSource:
    """A model file and how to open it: the MODEL argument (or -m), --unsafe,
    --custom-objects, and --signature, --raw-quantized where the command has them."""

    path: str
    unsafe: bool = False
    custom_objects: tuple = ()
    signature: str | None = None
    raw_quantized: bool = False

    def open(self, layers=True):
        """The api.Model. Without `layers` only its graph of tensors is wanted."""
        from tensorprobe import api

        return api.open_model(self.path, self.custom_objects, self.unsafe, self.signature, layers,
                              self.raw_quantized)


_MODEL_OPTIONS = (
    click.option("--custom-objects", "custom_objects", multiple=True, metavar="FILE.py",
                 type=click.Path(exists=True, dir_okay=False),
                 help="Import FILE.py (runs it) for the custom layers, models and functions the model uses. "
                      "Repeatable."),
    click.option("--unsafe", is_flag=True,
                 help="Allow loading Lambda layers that hold Python code (runs that code; trusted files only)."),
)


def _model(model, unsafe, custom_objects, signature=None, raw_quantized=False):
    return ModelSource(model, unsafe, custom_objects, signature, raw_quantized)


def _models(model_a, model_b, unsafe, custom_objects):
    return ModelSource(model_a, unsafe, custom_objects), ModelSource(model_b, unsafe, custom_objects)


# `model`: a ModelSource from the `model` parameter (MODEL, or dump's -m) and the options.
model_options = record("model", _model, *_MODEL_OPTIONS)
# `models`: (ModelSource, ModelSource) from MODEL_A and MODEL_B, opened the same way.
two_model_options = record("models", _models, *_MODEL_OPTIONS)


# ---- what to compute: --layer ... --tensor-match, --training, --jit, --gradients -----------

def _selection(layer_names, match, all_layers, tensor_names, tensor_match, training, jit,
               want, target, labels, target_output):
    from tensorprobe.pipeline import Selection

    if not want:
        needing = given("target", "labels", "target_output")
        if needing:
            raise click.UsageError(f"{needing[0]} needs --gradients")
        target = None
    return Selection(layer_names, match, all_layers, tensor_names, tensor_match, target, target_output, labels,
                     training, jit)


# `selection`: a pipeline.Selection from these options and those of run_mode_options and
# gradient_options (attached further down the help).
selection_options = record(
    "selection", _selection,
    click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
                 help="A layer name, nested path (vgg16/block1_conv2) or index (3, 1.3). Repeatable."),
    click.option("--match", metavar="REGEX", help="Also select every layer whose path matches REGEX."),
    click.option("--all", "all_layers", is_flag=True, help="Select every layer (input layers aside)."),
    click.option("-t", "--tensor", "tensor_names", multiple=True, metavar="NAME",
                 help="A graph tensor (`tensorprobe tensors` lists them), stored under /tensors. Repeatable."),
    click.option("--tensor-match", metavar="REGEX", help="Also select every graph tensor whose name matches REGEX."),
)

run_mode_options = attach(
    click.option("--training", is_flag=True,
                 help="Run in training mode (Dropout on, BatchNormalization on batch statistics)."),
    click.option("--jit", is_flag=True, help="Compile the extraction with XLA."),
)

gradient_options = attach(
    click.option("--gradients", "want", is_flag=True,
                 help="Also store the gradient of the target w.r.t. each selected output."),
    click.option("--target", default="top", show_default=True, metavar="TARGET",
                 help="class:K, top (the predicted class's score), sum, or loss:NAME (a Keras loss)."),
    click.option("--labels", type=click.Path(exists=True, dir_okay=False),
                 help="Labels .npy for --target loss:NAME, one row per sample."),
    click.option("--target-output", metavar="NAME", help="The model output the target is taken from."),
)


# ---- the inputs: INPUTS, --input NAME=PATH and how they are prepared -----------------------

@dataclass(frozen=True)
class Inputs:
    """What a command feeds the model: the INPUTS paths, the --input NAME=PATH pairs, and
    how they are prepared (inputs.options.Options)."""

    paths: list
    named: tuple
    prep: object


def _inputs(inputs, named_inputs, resize, no_resize, interpolation, size, preprocess, scale, offset, skip_bad):
    from tensorprobe.inputs.options import Options

    prep = Options(resize="none" if no_resize else resize, interpolation=interpolation, size=size,
                   preprocess=preprocess, scale=1.0 if scale is None else scale,
                   offset=0.0 if offset is None else offset, skip_bad=skip_bad)
    return Inputs(list(inputs), named_inputs, prep)


def input_options(f):
    """How inputs are found and prepared (dump's input options); with the INPUTS argument,
    one `inputs` record (Inputs)."""
    from tensorprobe.inputs import options as o

    return record(
        "inputs", _inputs,
        click.option("--input", "named_inputs", multiple=True, metavar="NAME=PATH", callback=parsed(o.parse_named),
                     help="Feed the model input NAME from PATH (a file, folder, glob or @list). Repeatable."),
        click.option("--resize", type=click.Choice(o.RESIZE_MODES), default="stretch", show_default=True,
                     help="Fit images to the input's size: stretch, crop (cover, cut the centre) or "
                          "pad (fit inside, zero border)."),
        click.option("--no-resize", is_flag=True, help="Refuse images whose size is not the input's."),
        click.option("--interpolation", type=click.Choice(o.INTERPOLATIONS), default="bilinear",
                     show_default=True, help="The tf.image.resize method."),
        click.option("--size", metavar="HxW", callback=parsed(o.parse_size),
                     help="Resize images to HxW for an input that takes any size."),
        click.option("--preprocess", metavar="NAME",
                     help="keras.applications preprocessing: vgg16, resnet50, mobilenet_v2, ..."),
        click.option("--scale", metavar="FACTOR", callback=parsed(o.parse_number),
                     help="Multiply inputs by FACTOR (e.g. 1/255), before --offset and --preprocess."),
        click.option("--offset", metavar="VALUE", callback=parsed(o.parse_number),
                     help="Add VALUE to inputs, after --scale."),
        click.option("--skip-bad", is_flag=True,
                     help="Pass over images that cannot be read, listing them in /inputs/skipped."),
    )(f)


# ---- how the job runs: -b, the progress bar, stdin -----------------------------------------

def _job(batch_size):
    from tensorprobe import api, pipeline
    from tensorprobe.console import err

    quiet = click.get_current_context().params.get("quiet", False)  # -q, which the command reads too
    progress = None if quiet or not err.is_terminal else api.progress_bar(err)  # never into a log
    return pipeline.Job(batch_size, progress, click.get_binary_stream("stdin"))


# `job`: a pipeline.Job: -b, a progress bar on a terminal unless -q, stdin for `-`.
job_options = record("job", _job, click.option("-b", "--batch-size", default=32, show_default=True,
                                               type=click.IntRange(min=1), help="Samples per forward pass."))


# ---- how values are stored: --dtype, --reduce, --compression -------------------------------

def _storage(store_dtype, reduce_, compression):
    from tensorprobe.probe import Storage, parse_compression

    return Storage(store_dtype, None if reduce_ == "none" else reduce_, parse_compression(compression))


# `storage`: a probe.Storage.
storage_options = record(
    "storage", _storage,
    click.option("--dtype", "store_dtype", type=click.Choice(["float16", "float32"]),
                 help="Store floating-point values in this dtype (default: as computed)."),
    click.option("--reduce", "reduce_", type=click.Choice(["none", "mean", "max"]), default="none",
                 show_default=True, help="Pool each output over its spatial axes: one value per channel."),
    click.option("--compression", default="none", show_default=True, metavar="gzip[:LEVEL]|lzf|none",
                 help="HDF5 compression of the datasets."),
)


# ---- where a dump runs: --ray, --workers, --gpus-per-worker, --blocks, --copy -------------

@dataclass(frozen=True)
class RayRun:
    """`dump --ray`: the cluster (a distributed.Cluster) and whether the parts are copied."""

    cluster: object
    copy: bool = False


def _ray_run(ray_address, workers, gpus_per_worker, blocks, copy):
    from tensorprobe.distributed import Cluster

    if ray_address is None:
        needing = given("workers", "gpus_per_worker", "blocks", "copy")
        if needing:
            raise click.UsageError(f"{needing[0]} needs --ray")
        return None
    return RayRun(Cluster(ray_address, workers, gpus_per_worker, blocks), copy)


# `ray_run`: a RayRun, or None without --ray.
ray_options = record(
    "ray_run", _ray_run,
    click.option("--ray", "ray_address", metavar="ADDRESS",
                 help="Compute the dump on Ray (auto: a running cluster; local: start one here; or an address), "
                      "in blocks as --shard splits rows, merged into OUTPUT. Needs tensorprobe[ray]."),
    click.option("--workers", type=click.IntRange(min=1), metavar="N",
                 help="With --ray: Ray Data workers, each loading the model once (default: one per node)."),
    click.option("--gpus-per-worker", type=click.FloatRange(min=0, min_open=True), metavar="G",
                 help="With --ray: GPUs each worker takes."),
    click.option("--blocks", type=click.IntRange(min=1), metavar="N",
                 help="With --ray: blocks of rows (default: 4 per worker, on batch boundaries where possible)."),
    click.option("--copy", is_flag=True,
                 help="With --ray: copy the parts into OUTPUT (and remove them) instead of virtual datasets."),
)


# ---- reading dumps ------------------------------------------------------------------------

def dump_file_options(f):
    """Options shared by the commands that read dumps."""
    return click.option(
        "--allow-incomplete", is_flag=True,
        help="Read a dump whose 'complete' attribute is not true (an interrupted or running dump), flagged as such.",
    )(f)
