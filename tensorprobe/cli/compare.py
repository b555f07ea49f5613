"""`compare`: two models on the same inputs, layer by layer."""

from dataclasses import dataclass

import click

from tensorprobe import errors
from tensorprobe.cli import options, signals
from tensorprobe.cli.render import debug
from tensorprobe.console import err, out, quiet_native_stderr


def _pairing(ctx, param, values):
    pairs = []
    for value in values:
        a, sep, b = value.partition("=")
        if not sep or not a or not b:
            raise click.BadParameter(f"'{value}': expected A_PATH=B_PATH", ctx, param)
        pairs.append((a, b))
    return tuple(pairs)


def _criterion(rtol, atol, metric, error_stat):
    from tensorprobe import modelcompare

    # None: the default for the models' precisions
    return modelcompare.parse_metric(metric, rtol or None, atol or None, error_stat=error_stat)


# `criterion`: a modelcompare.Criterion (or None), checked before any model is loaded.
criterion_options = options.record(
    "criterion", _criterion,
    click.option("--rtol", multiple=True, metavar="[GLOB=]VALUE",
                 help="Judge by numpy's rule |a - b| <= atol + rtol * |b| (B is the reference), with this rtol "
                      "(default 1e-5 when only --atol is given); GLOB=VALUE for the pairs whose path matches "
                      "GLOB (fnmatch; the first match wins). Repeatable."),
    click.option("--atol", multiple=True, metavar="[GLOB=]VALUE",
                 help="The same rule with this atol (default 1e-8 when only --rtol is given); GLOB=VALUE as "
                      "for --rtol. Repeatable."),
    options.error_stat_option("pair"),
    click.option("--metric", metavar="CRITERION",
                 help="scaled:X (max |A - B| <= X max |B|), snr:DB, cosine:X or allclose. Default: scaled:1e-4 "
                      "for two float32 models, snr:20 where either is quantized or half precision."),
)


@dataclass(frozen=True)
class Extras:
    """What `compare` also writes: --save-a, --save-b (dumps), --plot, --node-data, and
    whether they may replace files (--overwrite)."""

    save_a: str | None = None
    save_b: str | None = None
    picture: str | None = None
    node_data: str | None = None
    overwrite: bool = False

    def check(self):
        """Before the work: a wrong name, an existing file, no matplotlib for --plot."""
        from tensorprobe import store

        if self.picture is not None:
            from tensorprobe import plot
            from tensorprobe.plot import figures

            plot.picture_format(self.picture, "--plot")
            store.check_output(self.picture, self.overwrite, "--plot")
            figures.matplotlib_figure()
        if self.node_data is not None:
            if not self.node_data.lower().endswith(".json"):
                raise errors.UsageError(f"--node-data '{self.node_data}': name it .json (Model Explorer's node data)")
            store.check_output(self.node_data, self.overwrite, "--node-data")

    def write(self, result):
        """The picture and the node data of a comparison (the dumps are written as it runs)."""
        if self.picture is not None:
            from tensorprobe import plot

            plot.compare_picture(result, self.picture, self.overwrite)
        if self.node_data is not None:
            import json

            from tensorprobe import modelcompare, store

            with store.atomic_output(self.node_data, self.overwrite, "--node-data") as tmp:
                tmp.write_text(json.dumps(modelcompare.node_data(result), indent=2))


# `extras`: an Extras.
extra_outputs = options.record(
    "extras", Extras,
    click.option("--save-a", type=click.Path(), callback=options.hdf5_output,
                 help="Also write MODEL_A's outputs to this dump."),
    click.option("--save-b", type=click.Path(), callback=options.hdf5_output,
                 help="Also write MODEL_B's outputs to this dump."),
    click.option("--plot", "picture", type=click.Path(dir_okay=False), metavar="FILE.png",
                 help="Also draw each pair's error in model order (png, svg or pdf; needs the plot extra)."),
    click.option("--node-data", "node_data", type=click.Path(dir_okay=False), metavar="FILE.json",
                 help="Also write each pair's metric as Model Explorer node data for MODEL_B's graph."),
    options.overwrite_option("Replace --save-a/--save-b/--plot/--node-data files that exist."),
)


@click.command()
@click.argument("model_a", type=click.Path(exists=True))
@click.argument("model_b", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-l", "--layer", "layer_names", multiple=True, metavar="NAME",
              help="Compare only this layer of MODEL_A (and its pair in MODEL_B). Repeatable.")
@click.option("--match", metavar="REGEX", help="Compare only the layers of MODEL_A whose path matches REGEX.")
@click.option("--pair", "pairs", multiple=True, metavar="A_PATH=B_PATH", callback=_pairing,
              help="Pair these two layers (where names differ). Repeatable.")
@criterion_options
@options.job_options
@options.input_options
@extra_outputs
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (the exit status tells).")
@options.two_model_options
@click.pass_context
def compare(ctx, models, inputs, layer_names, match, pairs, criterion, job, extras, as_json, quiet):
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
    from tensorprobe import pipeline, report, text

    text.regex(match, "--match")
    extras.check()
    signals.runner_limits()
    signals.terminate_on_sigterm()
    with quiet_native_stderr(not debug()):
        a, b = models[0].open(), models[1].open()
        result = pipeline.run_compare(a.backend, b.backend, inputs.paths, inputs.named, inputs.prep, job,
                                      layers=layer_names, match=match, pairs=pairs, criterion=criterion,
                                      save_a=extras.save_a, save_b=extras.save_b, overwrite=extras.overwrite)
    if not quiet:
        for skipped in result["skipped"]:
            err.print(f"skipped {skipped['path']}: {skipped['reason']}", markup=False, highlight=False,
                      soft_wrap=True)
    if result["inputs_by_position"] and not quiet:
        err.print(f"warning: {result['inputs_by_position']}", markup=False, highlight=False, soft_wrap=True)
    extras.write(result)
    if as_json:
        out.print(report.compare_json(result), markup=False, highlight=False)
    elif not quiet:
        report.print_compare(out, result)
        if extras.picture is not None:
            err.print(f"wrote {extras.picture}", markup=False, highlight=False, soft_wrap=True)
    ctx.exit(0 if result["match"] else errors.FAILURE)
