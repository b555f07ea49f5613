"""`tensorprobe plot`: pictures of one layer of a dump, without TensorFlow.

  dumpfile.py   open a dump, resolve --layer to a dataset, read rows, stream values
  sources.py    read a sample's input image back from /inputs/source
  gradcam.py    Grad-CAM map from an activation and its gradient (NumPy)
  histogram.py  a histogram of every value, two passes in bounded memory (NumPy)
  figures.py    the matplotlib figures (imported lazily) and saving them
  steps.py      --over-steps: a training file's statistics of one layer against the step

`render(request)` reads what the picture needs, draws it, and writes it atomically. Every
check that needs no file (format, --channels syntax, option combinations) runs first.
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorprobe import errors
from tensorprobe.errors import InputError, UsageError

FORMATS = {"": "png", ".png": "png", ".svg": "svg", ".pdf": "pdf"}
MAX_PANELS = 64  # channel maps shown without --channels
MAX_SAMPLES = 16  # rows of bars
# The most values of one sample that a channel grid, a bar chart or a heatmap reads (they
# hold it in float64): 2**26 values, 512 MiB. --hist streams any size in blocks.
MAX_SAMPLE_VALUES = 1 << 26


@dataclass
class Request:
    dump: str
    layer: str
    samples: tuple  # sample rows; () for the default (sample 0)
    channels: str | None  # a Python slice as text, or None for all
    kind: str | None  # "hist", "heatmap", "steps" (--over-steps), or None for the layer's natural picture
    bins: int
    dpi: int
    output: str
    overwrite: bool


def render(request):
    """Draw `request` into its output file; return notes for the user (stderr)."""
    from tensorprobe import store
    from tensorprobe.plot import figures
    from tensorprobe.plot.dumpfile import Dump

    fmt = picture_format(request.output)
    choose = parse_channels(request.channels)
    if request.kind == "hist" and (request.samples or request.channels is not None):
        given = "sample" if request.samples else "channels"
        raise UsageError(f"{errors.name(given)}: {errors.name('hist')} counts every value of every sample and "
                         f"channel; drop {errors.name(given)}", argument=given)
    if request.kind == "heatmap" and request.channels is not None:
        raise UsageError(f"{errors.name('channels')}: {errors.name('heatmap')} weighs every channel; drop "
                         f"{errors.name('channels')}", argument="channels")
    store.check_output(request.output, request.overwrite)
    figures.matplotlib_figure()  # fail now, not after reading, when the extra is missing
    notes = []
    if request.kind == "steps":  # a training file (ProbeCallback's): plot/steps.py
        from tensorprobe.plot.steps import over_steps

        draw = over_steps(request)
        with store.atomic_output(request.output, request.overwrite) as tmp:
            figures.save(draw(dpi=request.dpi), tmp, fmt)
        return notes
    with Dump(request.dump) as dump, dump.reading():
        from tensorprobe import trainfile

        if trainfile.is_training(dump.file.attrs):  # its rows are steps, not samples
            raise UsageError(f"'{dump.path}' is a training file (ProbeCallback's): draw a layer's statistics "
                             "with --over-steps")
        path = dump.resolve(request.layer)
        ds = dump.activations(path)
        if ds.dtype.kind not in "biuf" or ds.ndim < 1 or ds.shape[0] == 0:
            raise InputError(f"'{dump.path}': /activations/{path} holds {ds.shape} {ds.dtype}, "
                             "not numeric values with a sample axis")
        _check_samples(dump, ds, request.samples)
        if request.kind != "hist":
            _check_sample_size(dump, ds, path)
        if request.kind == "hist":
            draw = _hist(ds, path, request)
        elif request.kind == "heatmap":
            draw = _heatmap(dump, ds, path, request, notes)
        elif ds.ndim == 4:
            draw = _grid(dump, ds, path, request, choose, notes)
        elif ds.ndim == 2:
            draw = _bars(dump, ds, path, request, choose)
        else:
            raise UsageError(f"{errors.name('layer')} '{request.layer}': '{path}' is {_shape(ds.shape)}; plot "
                             f"draws (N, H, W, C) feature maps and (N, C) units, and {errors.name('hist')} any layer",
                             argument="layer")
    fig = draw(dpi=request.dpi)
    with store.atomic_output(request.output, request.overwrite) as tmp:
        figures.save(fig, tmp, fmt)
    return notes


def picture_format(output, argument="output"):
    """png, svg or pdf from the output's extension (none: png); `argument` names the output
    (errors.name: `plot` is --plot in the CLI)."""
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"{errors.name(argument)} '{output}': unknown picture format '{suffix}'; use .png, .svg "
                         "or .pdf", argument=argument)
    return FORMATS[suffix]


_SLICE = re.compile(r"^\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?)?$")


def parse_channels(text):
    """--channels as a Python slice (`0:16`, `::2`, `-8:`) or one index (`5`); returns a
    function from the number of channels to the chosen indices."""
    if text is None:
        return lambda count: list(range(count))
    match = _SLICE.match(text)
    if not text.strip() or not match:
        raise UsageError(f"{errors.name('channels')} '{text}': not a Python slice like 0:16, ::2 or 5",
                         argument="channels")
    numbers = [None if g is None else int(g) for g in match.groups()]
    if ":" not in text:
        index = numbers[0]

        def one(count):
            if not -count <= index < count:
                raise UsageError(f"{errors.name('channels')} '{text}': the layer has {count} channels "
                                 f"(0 to {count - 1})", argument="channels")
            return [index % count]

        return one
    if numbers[2] == 0:
        raise UsageError(f"{errors.name('channels')} '{text}': the step cannot be zero", argument="channels")
    chosen = slice(*numbers)

    def pick(count):
        indices = list(range(count))[chosen]
        if not indices:
            raise UsageError(f"{errors.name('channels')} '{text}' selects none of the layer's {count} channels",
                             argument="channels")
        return indices

    return pick


def _check_samples(dump, ds, samples):
    n = ds.shape[0]
    for i in samples:
        if i >= n:
            raise UsageError(f"{errors.name('sample')} {i}: '{dump.path}' holds {n} samples (0 to {n - 1})",
                             argument="sample")


def _check_sample_size(dump, ds, path):
    values = int(np.prod(ds.shape[1:], dtype=np.int64))
    if values > MAX_SAMPLE_VALUES:
        raise InputError(
            f"'{dump.path}': one sample of /activations/{path} {_shape(ds.shape)} holds {values:,} values, "
            f"more than the {MAX_SAMPLE_VALUES:,} plot reads at once to draw it; {errors.name('hist')} draws any size"
        )


def _one_sample(request, what):
    if len(request.samples) > 1:
        raise UsageError(f"{errors.name('sample')}: {what} shows one sample; give {errors.name('sample')} once",
                         argument="sample")
    return request.samples[0] if request.samples else 0


def _grid(dump, ds, path, request, choose, notes):
    from tensorprobe.plot import figures

    sample = _one_sample(request, "a channel grid")
    count = ds.shape[-1]
    if request.channels is None and count > MAX_PANELS:
        channels = list(range(MAX_PANELS))
        notes.append(f"showing channels 0:{MAX_PANELS} of {count}; choose others with {errors.name('channels')}")
        which = f"0:{MAX_PANELS}"
    else:
        channels = choose(count)
        which = request.channels or f"0:{count}"
    row = np.asarray(ds[sample], dtype=np.float64)
    maps = row[..., channels]
    finite = np.isfinite(maps)
    scaled = np.full(maps.shape, np.nan)
    labels = []
    for k, channel in enumerate(channels):
        values = maps[..., k][finite[..., k]]
        low, high = (values.min(), values.max()) if values.size else (np.nan, np.nan)
        if high > low:
            scaled[..., k] = (maps[..., k] - low) / (high - low)
            labels.append(str(channel))
        else:  # flat (or no finite value): one colour, the bottom of the scale
            scaled[..., k] = np.where(finite[..., k], 0.0, np.nan)
            labels.append(f"{channel}: flat {low:.3g}")
    scaled[~finite] = np.nan
    values = row[np.isfinite(row)]
    span = f"{values.min():.4g} to {values.max():.4g}" if values.size else "no finite values"
    title = [
        f"{path}   sample {sample}: {_short(dump.source(sample))}",
        f"values {span}   channels {which} ({len(channels)} of {count}), each map scaled to its own range",
    ]
    return functools.partial(figures.channel_grid, scaled, labels, title)


def _bars(dump, ds, path, request, choose):
    from tensorprobe.plot import figures

    samples = request.samples or (0,)
    if len(samples) > MAX_SAMPLES:
        raise UsageError(f"{errors.name('sample')}: at most {MAX_SAMPLES} samples in one bar chart", argument="sample")
    count = ds.shape[-1]
    units = choose(count)
    rows = [(f"sample {i}: {_short(dump.source(i))}", np.asarray(ds[i], dtype=np.float64)[units])
            for i in samples]
    values = np.concatenate([v for _, v in rows])
    values = values[np.isfinite(values)]
    span = f"{values.min():.4g} to {values.max():.4g}" if values.size else "no finite values"
    which = request.channels or f"0:{count}"
    title = [f"{path}   units {which} ({len(units)} of {count})", f"values {span}"]
    return functools.partial(figures.unit_bars, rows, units, title)


def _hist(ds, path, request):
    from tensorprobe.plot import figures
    from tensorprobe.plot.dumpfile import stream
    from tensorprobe.plot.histogram import histogram

    h = histogram(lambda: stream(ds), request.bins)
    title = [
        f"{path}   every value of {ds.shape[0]} samples ({h.total:,} values, {request.bins} bins)",
        f"min {h.low:.4g}   max {h.high:.4g}   NaN {h.nan_count:,}   Inf {h.inf_count:,}",
    ]
    return functools.partial(figures.histogram, h, title)


def _heatmap(dump, ds, path, request, notes):
    from tensorprobe.plot import figures
    from tensorprobe.plot.gradcam import grad_cam, upsample
    from tensorprobe.plot.sources import read_image

    if ds.ndim != 4:
        raise UsageError(f"{errors.name('heatmap')}: '{path}' is {_shape(ds.shape)}; Grad-CAM needs (N, H, W, C) "
                         "feature maps", argument="heatmap")
    grads = dump.gradients(path)
    if grads is None:
        raise InputError(f"'{dump.path}' holds no gradients for '{path}'; make the dump with "
                         "`tensorprobe dump --gradients`")
    if grads.shape != ds.shape:
        raise InputError(f"'{dump.path}': /gradients/{path} is {grads.shape}, its activation {ds.shape}")
    sample = _one_sample(request, errors.name("heatmap"))
    cam, _ = grad_cam(ds[sample], grads[sample])
    if not np.isfinite(cam).all():
        raise InputError(f"'{dump.path}': the activation or gradient of '{path}' holds NaN or Inf in "
                         f"sample {sample}")
    source = dump.source(sample)
    image = read_image(source, sample)
    resize = dump.attr("resize")
    if resize in ("crop", "pad"):  # the model saw a cropped or padded image, not all of it
        notes.append(f"note: the dump fitted images to the model with {errors.name('resize')} {resize}; the map is "
                     "stretched over the whole image, so it is only roughly aligned")
    big = upsample(cam, image.shape[:2])
    peak = big.max()
    shown = big / peak if peak > 0 else np.zeros_like(big)
    target = grads.attrs.get("target", "?")
    target = target.decode() if isinstance(target, bytes) else target
    note = f"scaled to its peak {cam.max():.4g}" if peak > 0 else "zero everywhere: no channel raises the target here"
    title = [f"{path}   sample {sample}: {_short(source)}",
             f"Grad-CAM of target {target} ({note}), upsampled to the input's {image.shape[1]}x{image.shape[0]}"]
    return functools.partial(figures.heatmap, image, shown, title)


def _shape(shape):
    return "(" + ", ".join(["N", *map(str, shape[1:])]) + ("," if len(shape) == 1 else "") + ")"


def _short(text, limit=70):
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit // 2):]


def compare_picture(result, output, overwrite, dpi=100):
    """`compare --plot FILE`: the error of each pair in model order (figures.errors_by_layer)."""
    from tensorprobe import store
    from tensorprobe.plot import figures

    fmt = picture_format(output, "plot")
    fig = figures.errors_by_layer(result, dpi)
    with store.atomic_output(output, overwrite, "plot") as tmp:
        figures.save(fig, tmp, fmt)


def sweep_picture(result, output, overwrite, dpi=100):
    """`patch --plot FILE`: the recovered fraction of a patching sweep as a heat map, layers
    down, positions across (figures.patching_heatmap)."""
    from tensorprobe import store
    from tensorprobe.plot import figures

    fmt = picture_format(output, "plot")
    fig = figures.patching_heatmap(result, dpi)
    with store.atomic_output(output, overwrite, "plot") as tmp:
        figures.save(fig, tmp, fmt)
