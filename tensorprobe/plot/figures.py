"""The pictures themselves, drawn with matplotlib's object API (no pyplot, no global state).

Every figure has a size fixed in inches (whole tenths) from the data's shape, never measured
from its contents, so the picture's pixel size is that size times --dpi. Colours are fixed so that
tests and readers can rely on them: channel maps in viridis, bars and histogram bins in
blue (#1f77b4), exact zeros in orange (#ff7f0e), values piled up at the minimum or maximum in
red (#d62728), Grad-CAM in jet at 50% opacity over the input.
"""

import math

import numpy as np

from tensorprobe import errors
from tensorprobe.errors import TensorprobeError, UsageError

BLUE, ORANGE, RED = "#1f77b4", "#ff7f0e", "#d62728"
CAM_ALPHA = 0.5
TITLE_INCHES = 0.65  # room for a two-line title at the top
# The largest picture drawn: matplotlib's Agg canvas refuses a side of 2**16 pixels or more,
# and 64 Mpx is 256 MiB of RGBA in memory before the file is written.
MAX_SIDE_PIXELS = (1 << 16) - 1
MAX_PIXELS = 1 << 26


def matplotlib_figure():
    """matplotlib's Figure class, imported on first use; a clear error naming the extra when
    matplotlib or Pillow is missing."""
    try:
        import PIL  # noqa: F401  (read by --heatmap and by matplotlib itself)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise TensorprobeError(
            f"plot needs matplotlib and Pillow ({e.name or e} is missing): pip install 'tensorprobe[plot]'"
        ) from e

    def new(width, height, dpi):
        check_pixels(width, height, dpi)
        fig = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(fig)
        return fig

    return new


def check_pixels(width, height, dpi):
    """Refuse, before anything is allocated, a picture of `width` x `height` inches at `dpi`
    larger than MAX_PIXELS (or a side over MAX_SIDE_PIXELS)."""
    w, h = math.ceil(width * dpi), math.ceil(height * dpi)
    if max(w, h) > MAX_SIDE_PIXELS or w * h > MAX_PIXELS:
        raise UsageError(
            f"{errors.name('dpi')} {dpi}: the picture would be {w:,} x {h:,} pixels, over the "
            f"{MAX_PIXELS / 1e6:.0f} Mpx (and {MAX_SIDE_PIXELS:,} pixels a side) plot draws; lower "
            f"{errors.name('dpi')} or show fewer channels with {errors.name('channels')}", argument="dpi"
        )


def channel_grid(maps, labels, title, dpi):
    """One panel per channel map, `maps` (H, W, K) already scaled to [0, 1] (NaN shown red)."""
    new = matplotlib_figure()
    import matplotlib

    h, w, k = maps.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    side = min(3.0, max(1.1, max(h, w) / dpi))  # inches for a map's longer side
    pw, ph = side * w / max(h, w), side * h / max(h, w)
    gap, label = 0.12, 0.22
    width = _tenths(max(6.0, cols * (pw + gap) + 0.3))
    height = _tenths(TITLE_INCHES + rows * (ph + label) + 0.15)
    fig = new(width, height, dpi)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=RED)
    left0 = (width - cols * (pw + gap) + gap) / 2
    for i in range(k):
        r, c = divmod(i, cols)
        left = left0 + c * (pw + gap)
        bottom = height - TITLE_INCHES - (r + 1) * (ph + label) + 0.05
        ax = fig.add_axes((left / width, bottom / height, pw / width, ph / height))
        ax.imshow(maps[:, :, i], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(labels[i], fontsize=7, pad=2)
    _title(fig, title, height)
    return fig


def unit_bars(rows, units, title, dpi):
    """A bar chart of the units' values per sample: `rows` is [(label, values)], one axes
    each, sharing both axes."""
    new = matplotlib_figure()
    from matplotlib.ticker import MaxNLocator

    width = _tenths(min(16.0, max(6.0, 0.12 * len(units) + 1.5)))
    height = _tenths(TITLE_INCHES + 1.9 * len(rows) + 0.5)
    fig = new(width, height, dpi)
    axes = fig.subplots(len(rows), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.25 / width, top=1 - TITLE_INCHES / height,
                        bottom=0.5 / height, hspace=0.35)
    for ax, (label, values) in zip(axes, rows):
        ax.bar(units, values, width=0.8, color=BLUE)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(label, fontsize=8, loc="left")
        ax.margins(x=0.01)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("unit", fontsize=8)
    _title(fig, title, height)
    return fig


def histogram(h, title, dpi):
    """The bins of a `Histogram` on a log count scale: other values blue, exact zeros orange,
    pile-ups at the minimum or maximum red, each with its count in the legend."""
    new = matplotlib_figure()
    width, height = 8.0, 4.8
    fig = new(width, height, dpi)
    ax = fig.add_axes((0.9 / width, 0.55 / height, 1 - 1.15 / width, 1 - (TITLE_INCHES + 0.7) / height))
    total = max(1, h.total)
    ax.bar(h.edges[:-1], h.counts, width=np.diff(h.edges), align="edge", color=BLUE, linewidth=0,
           label=f"other values: {int(h.counts.sum()):,}")
    mark = max(h.edges[-1] - h.edges[0], 1e-12) / 150  # a visible width however narrow the bins
    bar_width = max(mark, h.edges[1] - h.edges[0])
    if h.zeros:
        ax.bar([0.0], [h.zeros], width=bar_width, color=ORANGE, linewidth=0,
               label=f"exact zeros: {h.zeros:,} ({100 * h.zeros / total:.1f}%)")
    for name, value, count in (("min", h.low, h.at_low), ("max", h.high, h.at_high)):
        if count:
            ax.bar([value], [count], width=bar_width, color=RED, linewidth=0,
                   label=f"at the {name} {value:.4g}: {count:,} ({100 * count / total:.1f}%)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)
    ax.set_xlabel("value", fontsize=8)
    ax.set_ylabel("count (log scale)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    _title(fig, title, height)
    return fig


def heatmap(image, cam, title, dpi):
    """The input image, and beside it the same with the Grad-CAM map (H, W, in [0, 1]) over
    it in jet."""
    new = matplotlib_figure()
    h, w = cam.shape
    side = 3.2
    pw, ph = side * w / max(h, w), side * h / max(h, w)
    gap, label = 0.3, 0.3
    width = _tenths(2 * pw + gap + 0.4)
    height = _tenths(TITLE_INCHES + ph + label + 0.15)
    fig = new(width, height, dpi)
    bottom = 0.15 / height
    for i, name in enumerate(("input", "Grad-CAM")):
        ax = fig.add_axes(((0.2 + i * (pw + gap)) / width, bottom, pw / width, ph / height))
        ax.imshow(image, interpolation="nearest")
        if i:
            ax.imshow(cam, cmap="jet", alpha=CAM_ALPHA, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, fontsize=8, pad=3)
    _title(fig, title, height)
    return fig


def over_steps(steps, panels, title, dpi):
    """`plot --over-steps`: one panel per statistic [(name, values, gradient values or None)]
    against the optimizer step, the activation's in blue, its gradient's in orange on its own
    axis (the two scales differ)."""
    new = matplotlib_figure()
    width, panel = 8.0, 1.9
    height = _tenths(TITLE_INCHES + len(panels) * panel + 0.2)
    fig = new(width, height, dpi)
    for i, (name, values, gradient) in enumerate(panels):
        bottom = (0.5 + (len(panels) - 1 - i) * panel) / height  # the top panel ends 0.35 below the title
        ax = fig.add_axes((0.9 / width, bottom, 1 - 1.9 / width, (panel - 0.35) / height))
        marker = "o" if len(steps) <= 50 else None
        ax.plot(steps, values, color=BLUE, marker=marker, markersize=3, linewidth=1.2)
        ax.set_ylabel(name.replace("_", " "), fontsize=8, color=BLUE)
        ax.tick_params(labelsize=7)
        if gradient is not None:
            twin = ax.twinx()
            twin.plot(steps, gradient, color=ORANGE, marker=marker, markersize=3, linewidth=1.2)
            twin.set_ylabel(f"gradient {name.replace('_', ' ')}", fontsize=8, color=ORANGE)
            twin.tick_params(labelsize=7)
        if i == len(panels) - 1:
            ax.set_xlabel("optimizer step", fontsize=8)
    _title(fig, title, height)
    return fig


def save(fig, path, fmt):
    """Write `fig` as `fmt` (png, svg, pdf), without a creation date, so the same data gives
    the same file. SVG keeps its text as text (searchable, and smaller than glyph outlines)."""
    import matplotlib

    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tensorprobe"}):
        fig.savefig(path, format=fmt, metadata=metadata)


def _tenths(inches):
    """Round a figure's side up to a tenth of an inch: whole pixels at the usual dpi values,
    so a picture's size is exactly proportional to --dpi."""
    return math.ceil(round(inches * 10, 6)) / 10


def _title(fig, lines, height):
    fig.text(0.5, 1 - 0.12 / height, "\n".join(lines), ha="center", va="top", fontsize=9)


def errors_by_layer(result, dpi):
    """`compare --plot`: each pair's error in model order on a log scale (the max absolute
    error, or the criterion's metric), the tolerance as a line, the first divergence marked."""
    new = matplotlib_figure()
    pairs = [p for p in result["pairs"] if p["status"] != "shape"]
    metric = result["metric"].split(":")[0]
    key, label = {"snr": ("snr_db", "SNR (dB)"), "cosine": ("cosine", "1 - cosine"),
                  "scaled": ("max_abs", "max abs error / max |B|")}.get(metric, ("max_abs", "max abs error"))
    values = [p[key] for p in pairs]
    if metric == "cosine":
        values = [1 - v for v in values]
    if metric == "scaled":
        values = [v / p["max_abs_b"] if p["max_abs_b"] else (0.0 if v == 0 else math.inf)
                  for v, p in zip(values, pairs)]
    width, height = _tenths(max(6.0, 1.2 + 0.28 * len(pairs))), 4.8
    fig = new(width, height, dpi)
    ax = fig.add_axes((0.9 / width, 1.9 / height, 1 - 1.15 / width, 1 - (TITLE_INCHES + 2.0) / height))
    # equal values (0 error, infinite SNR) show as a stub below everything else and the line
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if metric == "allclose":
        finite.append(result["atol"] or 1e-12)
    floor = min(finite) / 10 if finite else 1e-12
    shown = [floor if v is None or not math.isfinite(v) or v <= 0 else v for v in values]
    colors = [BLUE if p["status"] == "ok" else RED for p in pairs]
    ax.bar(range(len(pairs)), shown, color=colors, linewidth=0)
    if metric != "snr":
        ax.set_yscale("log")
    if metric == "allclose":
        ax.axhline(result["atol"], color=ORANGE, linewidth=1, label=f"atol {result['atol']:g}")
    else:
        limit = float(result["metric"].split(":")[1])
        ax.axhline(1 - limit if metric == "cosine" else limit, color=ORANGE, linewidth=1,
                   label=f"{result['metric']}")
    first = result["first_divergence"]
    if first is not None:
        k = next(i for i, p in enumerate(pairs) if p["path"] == first)
        ax.annotate("first divergence", (k, shown[k]), xytext=(0, 8), textcoords="offset points",
                    ha="center", fontsize=7, color=RED)
    ax.set_xticks(range(len(pairs)), [p["path"] for p in pairs], rotation=60, ha="right", fontsize=6)
    ax.set_ylabel(f"{label}" + (" (log scale)" if metric != "snr" else ""), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    _title(fig, [f"A = {result['a']}", f"B = {result['b']}: {result['samples']} samples"], height)
    return fig


def patching_heatmap(result, dpi):
    """`patch --plot`: the recovered fraction per layer (rows, model order) and position
    (columns; one column without --positions), diverging around 0, 1 the clean run's."""
    import numpy as np

    new = matplotlib_figure()
    grid = np.asarray(result["recovered"], dtype=float)
    rows, cols = grid.shape
    width = _tenths(max(4.0, 2.6 + 0.45 * cols))
    height = _tenths(max(2.4, 1.4 + 0.3 * rows))
    fig = new(width, height, dpi)
    ax = fig.add_axes((2.2 / width, 0.6 / height, 1 - 3.0 / width, 1 - 1.1 / height))
    limit = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(range(rows), result["layers"], fontsize=7)
    ax.set_xticks(range(cols), [str(p) for p in range(cols)] if result["positions"] else ["all"], fontsize=7)
    ax.set_xlabel("position" if result["positions"] else "")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).set_label("recovered", fontsize=8)
    _title(fig, [f"activation patching: {result['metric']}, {result['samples']} inputs"], height)
    return fig
