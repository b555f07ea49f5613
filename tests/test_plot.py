"""`tensorprobe plot`, checked on the pixels of the pictures it writes.

Synthetic dumps are written here with h5py, following the README's layout, so every value a
picture shows is known; what the pixels must look like is worked out from the documented
colours (viridis maps, blue #1f77b4 bars, orange #ff7f0e zeros, red #d62728 pile-ups, Grad-CAM
in jet over the input), never from the code under test.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import error_line

BLUE, ORANGE, RED = (31, 119, 180), (255, 127, 14), (214, 39, 40)
VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)


def write_dump(path, activations, sources, gradients=None):
    """A dump as the README describes it: root attributes, /inputs/source,
    /activations/<path> and /gradients/<path>."""
    n = len(sources)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "tensorprobe", "format_version": 1, "complete": True, "samples": n,
                        "model": "synthetic.keras"})
        f.create_dataset("inputs/source", data=sources, dtype=h5py.string_dtype("utf-8"))
        for group, arrays in (("activations", activations), ("gradients", gradients or {})):
            for name, array in arrays.items():
                ds = f.create_dataset(f"{group}/{name}", data=array, chunks=(1, *array.shape[1:]))
                ds.attrs["layer"] = name
                if group == "gradients":
                    ds.attrs["target"] = "class:1"
    return path


def pixels(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def runs(mask):
    """(start, stop) of each run of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def coloured(px):
    """Pixels with a clear hue: the colour-mapped ones, not white, black, grey or text."""
    return px.max(axis=-1) - px.min(axis=-1) > 40


def boxes(mask):
    """Bounding boxes (top, bottom, left, right) of the blocks of a mask laid out in a grid,
    row by row."""
    found = []
    for top, bottom in runs(mask.any(axis=1)):
        for left, right in runs(mask[top:bottom].any(axis=0)):
            found.append((top, bottom, left, right))
    return found


def is_colour(px, rgb, tolerance=3):
    return (np.abs(px - np.array(rgb)) <= tolerance).all(axis=-1)


@pytest.fixture
def plot(cli):
    """Run `tensorprobe plot ARGS`, asserting success and the one `wrote` line."""
    def run(*args):
        r = cli("plot", *args)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == ""
        assert r.stderr.strip().splitlines()[-1] == f"wrote {args[args.index('-o') + 1]}"
        return r

    return run


# -- channel grid -------------------------------------------------------------------------

def grid_dump(tmp_path):
    """(2, 8, 8, 4): a ramp, noise, a two-valued checkerboard, and channel 3 all zeros."""
    rng = np.random.default_rng(0)
    a = np.zeros((2, 8, 8, 4), np.float32)
    i, j = np.mgrid[0:8, 0:8]
    a[:, :, :, 0] = i + j
    a[:, :, :, 1] = rng.normal(size=(2, 8, 8))
    a[:, :, :, 2] = np.where((i + j) % 2 == 0, 5.0, 1000.0)
    return write_dump(tmp_path / "grid.h5", {"base/conv": a}, ["x.npy[0]", "x.npy[1]"])


def test_grid_draws_each_channel_scaled_and_a_zero_channel_flat(plot, tmp_path):
    dump = grid_dump(tmp_path)
    plot(dump, "--layer", "conv", "--sample", "1", "-o", tmp_path / "g.png")
    px = pixels(tmp_path / "g.png")
    panels = boxes(coloured(px))
    assert len(panels) == 4  # 2 x 2, row by row
    crops = [px[t + 2:b - 2, l + 2:r - 2] for t, b, l, r in panels]  # inside the edges
    sizes = {(b - t, r - l) for t, b, l, r in panels}
    assert len(sizes) == 1 and abs(np.subtract(*sizes.pop())) <= 1  # equal squares
    # channel 3 is all zeros: one colour, the bottom of viridis
    flat = crops[3].reshape(-1, 3)
    assert (flat == flat[0]).all() and is_colour(flat[0], VIRIDIS_LOW)
    # the ramp grows towards the bottom right
    ramp = crops[0].sum(axis=-1)
    h, w = ramp.shape
    assert ramp[: h // 4, : w // 4].mean() < ramp[-h // 4:, -w // 4:].mean()
    # the checkerboard of 5 and 1000 spans the whole scale, whatever its own values
    colours = np.unique(crops[2].reshape(-1, 3), axis=0)
    assert len(colours) == 2
    assert sorted(is_colour(colours, ref).argmax() for ref in (VIRIDIS_LOW, VIRIDIS_HIGH)) == [0, 1]
    assert all(is_colour(colours, ref).any() for ref in (VIRIDIS_LOW, VIRIDIS_HIGH))
    # the noise is not flat
    assert len({tuple(c) for c in crops[1].reshape(-1, 3)}) > 20


def test_grid_channels_slice_and_dpi(plot, tmp_path):
    dump = grid_dump(tmp_path)
    plot(dump, "--layer", "base/conv", "--channels", "1:4", "-o", tmp_path / "a.png")
    plot(dump, "--layer", "base/conv", "--channels", "1:4", "--dpi", "50", "-o", tmp_path / "b.png")
    plot(dump, "--layer", "base/conv", "--channels", "::3", "-o", tmp_path / "c.png")
    a, b, c = (pixels(tmp_path / n) for n in ("a.png", "b.png", "c.png"))
    assert len(boxes(coloured(a))) == 3
    assert a.shape[0] == 2 * b.shape[0] and a.shape[1] == 2 * b.shape[1]
    panels = boxes(coloured(c))  # channels 0 and 3: the second one flat
    assert len(panels) == 2
    t, bt, lt, rt = panels[1]
    assert len({tuple(p) for p in c[t + 2:bt - 2, lt + 2:rt - 2].reshape(-1, 3)}) == 1


def test_grid_title_names_layer_source_and_range_in_svg(plot, tmp_path):
    dump = grid_dump(tmp_path)
    plot(dump, "--layer", "conv", "-s", "1", "-o", tmp_path / "g.svg")
    text = (tmp_path / "g.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    a = h5py.File(dump, "r")["activations/base/conv"][1]
    assert "base/conv" in text and "sample 1: x.npy[1]" in text
    assert f"values {a.min():.4g} to {a.max():.4g}" in text
    plot(dump, "--layer", "conv", "-o", tmp_path / "g.pdf")
    assert (tmp_path / "g.pdf").read_bytes().startswith(b"%PDF")
    plot(dump, "--layer", "conv", "-o", tmp_path / "noext")
    assert (tmp_path / "noext").read_bytes().startswith(b"\x89PNG")


# -- bars -----------------------------------------------------------------------------------

def test_bars_heights_follow_the_values(plot, tmp_path):
    units = np.zeros((3, 8), np.float32)
    units[0] = np.arange(1, 9)  # 1..8
    units[2] = -np.arange(8, 0, -1)  # -8..-1
    dump = write_dump(tmp_path / "d.h5", {"fc": units}, ["v.npy[0]", "v.npy[1]", "v.npy[2]"])
    plot(dump, "-l", "fc", "-s", "0", "-s", "2", "-o", tmp_path / "bars.png")
    px = pixels(tmp_path / "bars.png")
    blue = is_colour(px, BLUE, 0)
    bands = runs(blue.any(axis=1))
    assert len(bands) == 2  # one chart per sample, top to bottom
    for (top, bottom), values in zip(bands, (units[0], units[2])):
        part = blue[top:bottom]
        bars = runs(part.any(axis=0))
        assert len(bars) == 8
        columns = [part[:, (left + right) // 2] for left, right in bars]
        heights = np.array([col.sum() for col in columns])
        np.testing.assert_allclose(heights / heights.max(), np.abs(values) / np.abs(values).max(), atol=0.02)
        starts = [np.flatnonzero(col)[0] for col in columns]
        ends = [np.flatnonzero(col)[-1] for col in columns]
        if values.min() > 0:  # standing on the zero line
            assert max(ends) - min(ends) <= 1
        else:  # hanging from it
            assert max(starts) - min(starts) <= 1


# -- histogram -------------------------------------------------------------------------------

def test_hist_puts_bars_at_the_values_zeros_and_pileup_apart(plot, tmp_path, monkeypatch):
    from tensorprobe.plot import dumpfile

    values = np.concatenate([np.zeros(3000), np.full(1000, 2.0), np.full(500, 7.0), np.full(200, 10.0)])
    values = np.random.default_rng(1).permutation(values).astype(np.float32).reshape(47, 10, 10)
    dump = write_dump(tmp_path / "h.h5", {"act": values}, [f"v.npy[{i}]" for i in range(47)])
    monkeypatch.setattr(dumpfile, "READ_BYTES", 1200)  # three rows per read: many blocks
    plot(dump, "-l", "act", "--hist", "-o", tmp_path / "h.png")
    px = pixels(tmp_path / "h.png")
    bars = is_colour(px, BLUE, 0) | is_colour(px, ORANGE, 0) | is_colour(px, RED, 0)
    base = np.flatnonzero(bars.any(axis=1))[-1] - 2  # a row just above the x axis: bars only
    row = px[base]

    def centres(rgb):
        return [(a + b - 1) / 2 for a, b in runs(is_colour(row, rgb, 0))]

    (zero,), (ten,) = centres(ORANGE), centres(RED)
    blue = centres(BLUE)
    assert len(blue) == 2
    bin_px = (ten - zero) / 100
    for centre, value in zip(blue, (2.0, 7.0)):
        assert abs(centre - (zero + (ten - zero) * (value + 0.05) / 10)) <= bin_px + 2
    heights = {name: bars[:, int(round(x))].sum() for name, x in (("0", zero), ("2", blue[0]),
                                                                  ("7", blue[1]), ("10", ten))}
    assert heights["0"] > heights["2"] > heights["7"] > heights["10"]  # 3000 > 1000 > 500 > 200
    plot(dump, "-l", "act", "--hist", "-o", tmp_path / "h.svg")
    text = (tmp_path / "h.svg").read_text()
    assert f"exact zeros: 3,000 ({100 * 3000 / 4700:.1f}%)" in text
    assert f"at the max 10: 200 ({100 * 200 / 4700:.1f}%)" in text
    assert "other values: 1,500" in text


# -- Grad-CAM ----------------------------------------------------------------------------------

def cam_dump(tmp_path, image_source):
    """Channel 0 hot in the top-right quadrant, weight +1; channel 1 hot bottom-left, weight
    -1 (so ReLU drops it); channel 2 uniform, weight 0 (its gradient averages to zero)."""
    a = np.zeros((2, 8, 8, 3), np.float32)
    g = np.zeros_like(a)
    a[:, 0:4, 4:8, 0] = 5.0
    a[:, 4:8, 0:4, 1] = 5.0
    a[:, :, :, 2] = 3.0
    g[:, :, :, 0] = 1.0
    g[:, :, :, 1] = -1.0
    g[:, :, :, 2] = np.where(np.indices((8, 8)).sum(axis=0) % 2 == 0, 1.0, -1.0)
    return write_dump(tmp_path / "cam.h5", {"base/conv": a}, ["other.npy[0]", image_source],
                      gradients={"base/conv": g})


def gray_image(tmp_path, height=48, width=64):
    """Two rows of uint8-range grey images (R = G = B), brighter to the right."""
    ramp = np.tile(np.linspace(100, 140, width), (height, 1))
    rows = np.stack([ramp, ramp])[..., None].repeat(3, axis=-1).astype(np.float32)
    np.save(tmp_path / "images.npy", rows)
    return str(tmp_path / "images.npy")


def heatmap_panels(px):
    """(input panel, overlay panel) pixels of a --heatmap picture: the overlay is the
    rightmost coloured block (jet has a hue everywhere); the input panel has the same rows and
    size and starts at the first non-white column on its left."""
    top, bottom, left, right = max(boxes(coloured(px)), key=lambda box: box[2])
    band = px[top:bottom, :left]
    start = np.flatnonzero((band < 245).any(axis=-1).any(axis=0))[0]
    return px[top:bottom, start:start + right - left], px[top:bottom, left:right]


def decode_cam(px):
    """The Grad-CAM values a --heatmap picture shows: undo the 50% blend with the input panel
    beside it, then find each pixel's nearest colour in jet."""
    from matplotlib import colormaps

    image, overlay = heatmap_panels(px)
    jet = np.clip(2 * overlay - image, 0, 255)
    lut = colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255
    colours, index = np.unique(jet.reshape(-1, 3), axis=0, return_inverse=True)
    nearest = np.argmin(((colours[:, None, :] - lut[None]) ** 2).sum(axis=-1), axis=-1) / 255
    return nearest[index.ravel()].reshape(jet.shape[:2]), image


def test_heatmap_hot_spot_lands_where_the_activation_is(plot, tmp_path):
    source = gray_image(tmp_path)
    dump = cam_dump(tmp_path, f"{source}[1]")
    plot(dump, "-l", "conv", "--heatmap", "-s", "1", "-o", tmp_path / "cam.png")
    cam, image = decode_cam(pixels(tmp_path / "cam.png"))
    h, w = cam.shape
    assert abs(w / h - 64 / 48) < 0.02  # upsampled to the input's shape
    ys, xs = np.nonzero(cam >= 0.95)
    assert len(ys) > 0.15 * cam.size  # most of a quadrant
    assert ys.max() < h / 2 and xs.min() > w / 2  # the top-right one
    assert cam[h * 5 // 8:, : w * 3 // 8].max() <= 0.02  # the bottom-left spot: a negative weight
    # the input panel: grey, scaled from black to white, brighter to the right like the array
    assert (image.max(axis=-1) - image.min(axis=-1) <= 2).all()
    assert image[h // 2, 1].sum() < 30 and image[h // 2, -2].sum() > 3 * 230


def test_heatmap_reads_image_files_back(plot, tmp_path):
    ramp = np.tile(np.linspace(60, 200, 40).astype(np.uint8), (30, 1))
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(tmp_path / "photo.png")
    dump = cam_dump(tmp_path, str(tmp_path / "photo.png"))
    r = plot(dump, "-l", "conv", "--heatmap", "-s", "1", "-o", tmp_path / "cam.png")
    assert "note" not in r.stderr
    cam, image = decode_cam(pixels(tmp_path / "cam.png"))
    h, w = cam.shape
    assert abs(w / h - 40 / 30) < 0.02
    ys, xs = np.nonzero(cam >= 0.95)
    assert ys.max() < h / 2 and xs.min() > w / 2
    # an image file is shown as it is, not rescaled: 60 stays dark grey, 200 light grey
    assert abs(image[h // 2, 1].mean() - 60) <= 3 and abs(image[h // 2, -2].mean() - 200) <= 3


def test_heatmap_notes_images_the_dump_cropped(plot, tmp_path):
    dump = cam_dump(tmp_path, f"{gray_image(tmp_path)}[1]")
    with h5py.File(dump, "a") as f:
        f.attrs["resize"] = "crop"
    r = plot(dump, "-l", "conv", "--heatmap", "-s", "1", "-o", tmp_path / "cam.png")
    assert r.stderr.splitlines()[0].startswith("note: the dump fitted images to the model with --resize crop")


# -- errors ------------------------------------------------------------------------------------

def error_files(tmp):
    grid_dump(tmp)
    gray_image(tmp)
    cam_dump(tmp, str(tmp / "gone.npy") + "[3]")
    write_dump(tmp / "ambiguous.h5", {"a/conv": np.ones((1, 2, 2, 1)), "b/conv": np.ones((1, 2, 2, 1)),
                                      "seq": np.ones((1, 3, 4)), "fc": np.ones((1, 3)),
                                      "score": np.ones((1,))}, ["v.npy"])
    (tmp / "random.h5").write_bytes(os.urandom(2048))
    with h5py.File(tmp / "other.h5", "w") as f:
        f["activations/x"] = np.ones((1, 2))
    (tmp / "exists.png").write_bytes(b"precious")


CASES = [
    ("unknown-layer", ["{t}/grid.h5", "-l", "conv3", "-o", "{t}/o.png"], 2, "did you mean 'base/conv'"),
    ("ambiguous-layer", ["{t}/ambiguous.h5", "-l", "conv", "-o", "{t}/o.png"], 2, "a/conv, b/conv"),
    ("group-layer", ["{t}/grid.h5", "-l", "base", "-o", "{t}/o.png"], 2, "base/conv"),
    ("channels-syntax", ["{t}/grid.h5", "-l", "conv", "--channels", "0:a", "-o", "{t}/o.png"], 2, "--channels '0:a'"),
    ("channels-step-0", ["{t}/grid.h5", "-l", "conv", "--channels", "::0", "-o", "{t}/o.png"], 2, "step"),
    ("channels-empty", ["{t}/grid.h5", "-l", "conv", "--channels", "3:1", "-o", "{t}/o.png"], 2, "selects none of the layer's 4"),
    ("channel-index", ["{t}/grid.h5", "-l", "conv", "--channels", "4", "-o", "{t}/o.png"], 2, "4 channels"),
    ("sample-range", ["{t}/grid.h5", "-l", "conv", "-s", "2", "-o", "{t}/o.png"], 2, "holds 2 samples"),
    ("grid-two-samples", ["{t}/grid.h5", "-l", "conv", "-s", "0", "-s", "1", "-o", "{t}/o.png"], 2, "--sample"),
    ("hist-and-sample", ["{t}/grid.h5", "-l", "conv", "--hist", "-s", "1", "-o", "{t}/o.png"], 2, "--sample"),
    ("hist-and-heatmap", ["{t}/cam.h5", "-l", "conv", "--hist", "--heatmap", "-o", "{t}/o.png"], 2, "--hist and --heatmap"),
    ("format", ["{t}/grid.h5", "-l", "conv", "-o", "{t}/o.jpg"], 2, "'.jpg'"),
    ("output-exists", ["{t}/grid.h5", "-l", "conv", "-o", "{t}/exists.png"], 2, "--overwrite"),
    ("output-folder", ["{t}/grid.h5", "-l", "conv", "-o", "{t}/no/o.png"], 2, "does not exist"),
    ("dump-missing", ["{t}/nope.h5", "-l", "conv", "-o", "{t}/o.png"], 2, "nope.h5"),
    ("rank-3", ["{t}/ambiguous.h5", "-l", "seq", "-o", "{t}/o.png"], 2, "(N, 3, 4)"),
    ("rank-1", ["{t}/ambiguous.h5", "-l", "score", "-o", "{t}/o.png"], 2, "(N,)"),
    ("heatmap-2d", ["{t}/ambiguous.h5", "-l", "fc", "--heatmap", "-o", "{t}/o.png"], 2, "--heatmap"),
    ("not-hdf5", ["{t}/random.h5", "-l", "conv", "-o", "{t}/o.png"], 1, "not an HDF5 file"),
    ("not-a-dump", ["{t}/other.h5", "-l", "x", "-o", "{t}/o.png"], 1, "not a tensorprobe dump"),
    ("no-gradients", ["{t}/grid.h5", "-l", "conv", "--heatmap", "-o", "{t}/o.png"], 1, "--gradients"),
    ("input-gone", ["{t}/cam.h5", "-l", "conv", "--heatmap", "-s", "1", "--overwrite", "-o", "{t}/exists.png"], 1, "gone.npy"),
]


@pytest.mark.parametrize("args,status,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_plot_gets_one_error_line_and_writes_nothing(cli, tmp_path, args, status, text):
    error_files(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = cli("plot", *[a.replace("{t}", str(tmp_path)) for a in args])
    assert r.exit_code == status, r.stderr
    assert text in error_line(r)
    assert r.stdout == ""
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_missing_input_error_explains_that_dumps_keep_paths(cli, tmp_path):
    error_files(tmp_path)
    r = cli("plot", tmp_path / "cam.h5", "-l", "conv", "--heatmap", "-s", "1", "-o", tmp_path / "o.png")
    line = error_line(r)
    assert f"input '{tmp_path / 'gone.npy'}' of sample 1 does not exist" in line and "not a copy" in line


def test_missing_matplotlib_names_the_extra(tmp_path):
    grid_dump(tmp_path)
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from click.testing import CliRunner\n"
        "from tensorprobe.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['plot', {str(tmp_path / 'grid.h5')!r}, '-l', 'conv', '-o', "
        f"{str(tmp_path / 'o.png')!r}])\n"
        "print(r.exit_code)\n"
        "print(r.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, line = r.stdout.strip().splitlines()
    assert status == "1"
    assert line.startswith("error: ") and "pip install 'tensorprobe[plot]'" in line
    assert not (tmp_path / "o.png").exists()


# -- a real dump ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_dump(zoo, tmp_path_factory):
    from click.testing import CliRunner

    from tensorprobe.cli import cli

    out = tmp_path_factory.mktemp("plot") / "acts.h5"
    r = CliRunner().invoke(cli, ["dump", "-m", str(zoo["transfer.keras"]), "-l", "block1_conv2",
                                 "-l", "block3_conv3", "-l", "fc1", "--gradients", "-o", str(out),
                                 str(zoo["input.npy"])])
    assert r.exit_code == 0, r.stderr
    return out


def test_pictures_of_a_real_dump(plot, real_dump, zoo, tmp_path):
    with h5py.File(real_dump, "r") as f:
        maps = f["activations/vgg16/block1_conv2"][2]
        act, grad = f["activations/vgg16/block3_conv3"][0], f["gradients/vgg16/block3_conv3"][0]
        every = f["activations/vgg16/block1_conv2"][()]
        assert f["inputs/source"].asstr()[0] == f"{zoo['input.npy']}[0]"

    plot(real_dump, "-l", "block1_conv2", "-s", "2", "-o", tmp_path / "grid.png")
    px = pixels(tmp_path / "grid.png")
    panels = boxes(coloured(px))
    assert len(panels) == maps.shape[-1] == 8
    for k, (t, b, l, r) in enumerate(panels):
        panel = px[t:b, l:r]
        flat_here = len({tuple(p) for p in panel[2:-2, 2:-2].reshape(-1, 3)}) == 1
        assert flat_here == (maps[..., k].min() == maps[..., k].max()), k
        # as much of the panel at the bottom of the scale as of the map at its minimum
        at_min = (maps[..., k] == maps[..., k].min()).mean()
        assert abs(is_colour(panel, VIRIDIS_LOW).mean() - at_min) < 0.03, k

    plot(real_dump, "-l", "vgg16/block1_conv2", "--hist", "-o", tmp_path / "hist.png")
    px = pixels(tmp_path / "hist.png")
    assert is_colour(px, ORANGE, 0).any() == bool((every == 0).any())
    assert is_colour(px, BLUE, 0).sum() > 1000

    plot(real_dump, "-l", "fc1", "-s", "0", "-s", "3", "-o", tmp_path / "bars.png")
    assert len(runs(is_colour(pixels(tmp_path / "bars.png"), BLUE, 0).any(axis=1))) == 2

    plot(real_dump, "-l", "block3_conv3", "--heatmap", "-o", tmp_path / "cam.png")
    decoded, image = decode_cam(pixels(tmp_path / "cam.png"))
    assert decoded.shape[0] == decoded.shape[1]  # the 32x32 input
    # Grad-CAM computed here: mean gradient per channel, weighted sum, ReLU; compared cell by
    # cell (8x8) with what the picture shows
    cam = np.maximum(np.einsum("hwc,c->hw", act, grad.mean(axis=(0, 1))), 0)
    cell = decoded.shape[0] // 8
    coarse = decoded[: cell * 8, : cell * 8].reshape(8, cell, 8, cell).mean(axis=(1, 3))
    assert np.corrcoef(coarse.ravel(), cam.ravel())[0, 1] > 0.9
