"""`summary`, `diff` and `plot`: reading dumps. None of them imports TensorFlow."""

import click

from tensorprobe import errors
from tensorprobe.cli import options, signals
from tensorprobe.cli.render import print_summary, warn_incomplete
from tensorprobe.console import err, out


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object to stdout.")
@options.dump_file_options
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
        warn_incomplete(file)
    print_summary(result, file, as_json, console=out, provenance=True)


@click.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option("--rtol", multiple=True, metavar="[GLOB=]VALUE",
              help="Relative tolerance: values match when |a - b| <= atol + rtol * |b| (default 1e-05); "
                   "GLOB=VALUE for the datasets whose path matches GLOB (fnmatch; the first match wins). "
                   "Repeatable.")
@click.option("--atol", multiple=True, metavar="[GLOB=]VALUE",
              help="Absolute tolerance (numpy.allclose's default and rule: 1e-08); GLOB=VALUE as for --rtol. "
                   "Repeatable.")
@options.error_stat_option("dataset")
@click.option("--only", metavar="REGEX", help="Compare only the datasets whose path matches REGEX (re.search).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object to stdout.")
@options.dump_file_options
@click.pass_context
def diff(ctx, a, b, rtol, atol, error_stat, only, as_json, allow_incomplete):
    """Compare two dumps dataset by dataset and name the first dataset, in model order, that
    differs. Exit status 0 when everything matches, 1 when anything differs or is missing.

    Values match when |a - b| <= atol + rtol * |b| (B is the reference, as in numpy.allclose),
    or when both are NaN, or the same infinity. Datasets are read a block of rows at a time.

    \b
      tensorprobe diff golden.h5 new.h5 --atol 1e-4
      tensorprobe diff a.h5 b.h5 --only '^vgg16/' --json | jq .first_difference
    """
    from tensorprobe import dumpdiff, report

    result = dumpdiff.diff_dumps(a, b, rtol or dumpdiff.RTOL, atol or dumpdiff.ATOL, only, allow_incomplete,
                                 error_stat)
    for path, side in ((a, "a"), (b, "b")):
        if not result["complete"][side]:
            warn_incomplete(path)
    if as_json:
        out.print(report.diff_json(result), markup=False, highlight=False)
    else:
        report.print_diff(out, result)
    ctx.exit(0 if result["match"] else errors.FAILURE)


@click.command()
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
@options.overwrite_option()
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
    signals.terminate_on_sigterm()
    for note in render(request):
        err.print(note, markup=False, highlight=False)
    err.print(f"wrote {output}", markup=False, highlight=False)
