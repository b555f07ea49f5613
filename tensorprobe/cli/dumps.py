"""`dump` and `merge`: writing dumps."""

import sys
from dataclasses import dataclass

import click

from tensorprobe import errors
from tensorprobe.cli import options, signals
from tensorprobe.cli.render import debug, error, print_summary
from tensorprobe.console import err, quiet_native_stderr


@dataclass
class Output:
    """Where `dump` writes, and whether: -o, --overwrite, --max-bytes, --shard K/N, --resume."""

    path: str
    overwrite: bool = False
    max_bytes: str | None = None
    shard: object = None  # K/N as given; a shard.Shard once checked
    resume: bool = False
    shard_origin: str = "--shard"  # or TENSORPROBE_SHARD, where the value came from

    def check(self):
        """What needs no model (a usage error now, not after the model has loaded)."""
        from tensorprobe import shard as sharding
        from tensorprobe import text

        if self.max_bytes is not None:
            text.parse_size(self.max_bytes)
        if isinstance(self.shard, str):
            self.shard = sharding.parse(self.shard, self.shard_origin)


def _output(output, overwrite, max_bytes, shard, resume):
    from tensorprobe import shard as sharding

    from_env = click.get_current_context().get_parameter_source("shard").name == "ENVIRONMENT"
    return Output(output, overwrite, max_bytes, shard, resume, sharding.ENV if from_env else "--shard")


# `output`: an Output from -o, --overwrite and the --max-bytes, --shard, --resume further down.
output_options = options.record(
    "output", _output,
    click.option("-o", "--output", default="activations.h5", show_default=True, type=click.Path(),
                 callback=options.hdf5_output, help="The HDF5 file to write (.h5 or .hdf5)."),
    options.overwrite_option(),
)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-m", "--model", "model", envvar="TENSORPROBE_MODEL", show_envvar=True,
              type=click.Path(exists=True), required=True, help="The model: .keras, .h5, .tflite, .onnx, a SavedModel folder, a frozen graph (.pb, .pbtxt).")
@options.selection_options
@output_options
@options.job_options
@options.input_options
@click.option("--json", "as_json", is_flag=True, help="Print the dump summary as JSON to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--fail-on-nonfinite", is_flag=True,
              help="Exit 1 after the dump when any dataset holds NaN or Inf.")
@options.run_mode_options
@click.option("--raw-quantized", is_flag=True,
              help="TFLite: store quantized tensors as their integers, not dequantized float32.")
@click.option("--max-bytes", metavar="SIZE", help="Refuse a dump larger than SIZE (e.g. 500M, 2G).")
@click.option("--max-live-bytes", metavar="SIZE",
              help="ONNX: compute the tensors in chunks whose values for one batch take at most SIZE, one "
                   "onnxruntime session each (default 1G).")
@click.option("--shard", metavar="K/N", envvar="TENSORPROBE_SHARD", show_envvar=True,
              help="Dump only shard K (from 0) of N: rows [K*R//N, (K+1)*R//N) of the R input rows.")
@click.option("--resume", is_flag=True,
              help="Skip the dump when OUTPUT is already this shard's (or dump's) complete output.")
@options.storage_options
@options.gradient_options
@options.signature_option
@options.model_options
@options.ray_options
def dump(inputs, model, selection, output, job, storage, as_json, quiet, fail_on_nonfinite, max_live_bytes, ray_run):
    """Compute the outputs of the chosen layers (or graph tensors) for INPUTS and write them
    to HDF5. The model is a .keras, .h5, .tflite or .onnx file, a SavedModel folder or a frozen graph.

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
      tensorprobe dump -m model.keras --all -o acts.h5 --ray local --workers 2 photos/
    """
    import dataclasses

    from tensorprobe import pipeline, store, text

    if max_live_bytes is not None:
        selection = dataclasses.replace(selection, max_live_bytes=text.parse_size(max_live_bytes, "max_live_bytes"))
    selection.check(inputs.prep.skip_bad)
    output.check()
    signals.runner_limits()  # before TensorFlow starts its threads
    signals.stop_on_signals(store)

    def on_size(needed, free):
        if not quiet and err.is_terminal:  # beside the progress bar; CI logs stay clean
            err.print(f"writing about {store.mib(needed)} to {output.path} ({store.mib(free)} free)",
                      markup=False, highlight=False, soft_wrap=True)

    command = ["tensorprobe", *click.get_current_context().find_root().command.argv]
    if ray_run is not None:
        result = _on_ray(inputs, model, selection, output, job, storage, quiet, ray_run, command)
        if result is not None:  # None: interrupted once the output was complete (said so)
            _report(result, output, as_json, quiet, fail_on_nonfinite)
        return
    with signals.success_once_written(store, output.path):
        with quiet_native_stderr(not debug()):
            backend = model.open(selection.wants_layers).backend
            result = pipeline.run_dump(backend, inputs.paths, inputs.named, output.path, selection, inputs.prep,
                                       storage, job, overwrite=output.overwrite, shard=output.shard,
                                       resume=output.resume, max_bytes=output.max_bytes,
                                       attrs={"command": command}, on_size=on_size)
        _report(result, output, as_json, quiet, fail_on_nonfinite)


def _on_ray(inputs, model, selection, output, job, storage, quiet, ray_run, command):
    """`dump --ray`: the same dump, in blocks on Ray workers, merged into the output."""
    from tensorprobe import distributed, store

    distributed.require_ray()
    for conflict, name in ((output.shard is not None, "--shard"), (output.max_bytes is not None, "--max-bytes")):
        if conflict:
            raise click.UsageError(f"{name} cannot be combined with --ray (which shards the rows itself)")

    def on_block(done, blocks, rows_done, rows):
        if not quiet and err.is_terminal:  # progress for people; logs stay clean
            err.print(f"ray: {done}/{blocks} blocks, {rows_done:,}/{rows:,} rows", markup=False, highlight=False)

    model_options = {"custom_objects": model.custom_objects, "unsafe": model.unsafe, "signature": model.signature,
                     "raw_quantized": model.raw_quantized}
    result = None
    with signals.success_once_written(store, output.path):
        with quiet_native_stderr(not debug()):
            result = distributed.run(model.path, inputs.paths, inputs.named, output.path, selection, inputs.prep,
                                   storage, job.batch_size, ray_run.cluster, model_options=model_options,
                                   copy=ray_run.copy, overwrite=output.overwrite, resume=output.resume,
                                   attrs={"command": command}, on_block=on_block, quiet_ray=not debug())
    return result


def _report(result, output, as_json, quiet, fail_on_nonfinite):
    if result.resumed:
        what = "shard" if output.shard is not None else "dump"
        err.print(f"skipped: '{output.path}' is already this {what}'s complete output (--resume)",
                  markup=False, highlight=False, soft_wrap=True)
        if as_json:
            print_summary(result.summary, output.path, as_json, console=err, provenance=False)
        return
    if not quiet:
        for path, reason in result.skipped:
            err.print(f"skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if as_json or not quiet:
        print_summary(result.summary, output.path, as_json, console=err, provenance=False)
        if not as_json:
            err.print(f"wrote {output.path}", markup=False, highlight=False)
    if fail_on_nonfinite and result.nonfinite:
        sources = _sources(output.path, [row for *_, row in result.nonfinite])
        for (path, nans, infs, row), source_name in zip(result.nonfinite, sources):
            error(f"{path} holds {nans} NaN and {infs} Inf values, first in sample {row} ({source_name})")
        sys.exit(errors.FAILURE)


def _sources(output, rows):
    """The /inputs/source entries of these rows of the dump."""
    import h5py

    with h5py.File(output, "r") as f:
        return [f["inputs/source"].asstr()[row] for row in rows]


@click.command()
@click.argument("shards", metavar="SHARD.h5...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), callback=options.hdf5_output,
              help="The merged HDF5 file to write (.h5 or .hdf5).")
@click.option("--copy", is_flag=True,
              help="Copy the rows into a self-contained file instead of virtual datasets that read the shards.")
@options.overwrite_option()
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

    signals.stop_on_signals(store)
    with signals.success_once_written(store, output):
        rows, count = merging.merge(shards, output, copy, overwrite)
        if not quiet:
            err.print(f"wrote {output}: {rows} rows from {count} shards ({'copied' if copy else 'virtual'})",
                      markup=False, highlight=False, soft_wrap=True)
