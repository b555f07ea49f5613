"""Inputs as people have them: images, folders, globs, @lists, stdin, .npz and --input,
preprocessing, bad inputs, progress and memory.

Every value is checked against a pipeline written here: Pillow decodes, NumPy converts
channels, crops and pads, tf.image.resize resamples, keras.applications preprocesses, and
Keras computes the layers. The small models below start with a linear Activation called
`ident`, so dumping `ident` yields exactly the values fed to the model.
"""

import io
import os
import subprocess
import sys
from fractions import Fraction
from math import floor
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import error_line, run_on_terminal, screen_lines
from test_dump import submodel_values

BIN = Path(sys.executable).parent / "tensorprobe"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Small models whose first layer, `ident`, passes the input through unchanged."""
    import keras

    L = keras.layers
    folder = tmp_path_factory.mktemp("input_models")
    keras.utils.set_random_seed(7)

    def image_model(name, shape, conv=True, data_format="channels_last"):
        x = keras.Input(shape, name="image")
        y = L.Activation("linear", name="ident")(x)
        if conv:
            y = L.Conv2D(2, 3, name="conv")(y)
        y = L.GlobalAveragePooling2D(data_format=data_format, name="gap")(y)
        keras.Model(x, L.Dense(2, name="out")(y), name=name).save(folder / f"{name}.keras")

    image_model("rgb32", (32, 32, 3))
    image_model("gray32", (32, 32, 1))
    image_model("rgba16", (16, 16, 4))
    image_model("any_size", (None, None, 3))
    # Channels-first: TensorFlow's CPU convolutions are channels-last only, so no Conv2D here.
    image_model("chw", (3, 24, 20), conv=False, data_format="channels_first")

    x = keras.Input((28, 28), name="plane")
    y = L.Activation("linear", name="ident")(x)
    keras.Model(x, L.Dense(2, name="out")(L.Flatten()(y)), name="plane28").save(folder / "plane28.keras")

    # Three inputs of three kinds.
    image = keras.Input((16, 16, 3), name="image")
    meta = keras.Input((5,), name="meta")
    seq = keras.Input((4, 2), name="seq")
    a = L.GlobalAveragePooling2D()(L.Conv2D(3, 3, name="conv")(L.Activation("linear", name="ident_image")(image)))
    b = L.Activation("linear", name="ident_meta")(meta)
    c = L.Flatten()(L.Activation("linear", name="ident_seq")(seq))
    merged = L.Concatenate(name="merged")([a, b, c])
    keras.Model([image, meta, seq], L.Dense(3, name="out")(merged), name="three").save(folder / "three.keras")
    return {p.stem: p for p in folder.glob("*.keras")}


def _png_bytes(array, fmt="PNG", **kw):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder of real-format images of mixed sizes and kinds, and files to pass over."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)

    def pixels(*shape):
        return rng.integers(0, 256, shape, dtype=np.uint8)

    (root / "sub").mkdir()
    (root / ".cache").mkdir()
    Image.fromarray(pixels(40, 48, 3)).save(root / "a.png")
    Image.fromarray(pixels(36, 36, 3)).save(root / "B.bmp")
    Image.fromarray(pixels(50, 30, 3)).save(root / "c.jpg", quality=90)
    Image.fromarray(pixels(20, 30)).save(root / "d_gray.png")
    Image.fromarray(pixels(32, 32, 4)).save(root / "e_rgba.png")
    frames = [Image.fromarray(pixels(33, 31, 3)) for _ in range(2)]
    frames[0].save(root / "sub" / "f.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(pixels(24, 40)).save(root / "sub" / "g_gray.jpg")
    (root / "notes.txt").write_text("not an input")
    Image.fromarray(pixels(8, 8, 3)).save(root / ".hidden.png")
    Image.fromarray(pixels(8, 8, 3)).save(root / ".cache" / "h.png")
    return root


@pytest.fixture(scope="session")
def many(tmp_path_factory):
    """Folders of N small PNGs and an (N, 64, 64, 3) .npy for N = 200 and 4000, and a tiny
    model on 64x64 images: the memory test's inputs."""
    import keras

    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(5)
    blobs = [_png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    for n in (200, 4000):
        (root / f"n{n}" / "images").mkdir(parents=True)
        for i in range(n):
            (root / f"n{n}" / "images" / f"{i:05d}.png").write_bytes(blobs[i % len(blobs)])
        np.save(root / f"n{n}" / "rows.npy", rng.uniform(0, 255, (n, 64, 64, 3)).astype("float32"))
    L = keras.layers
    x = keras.Input((64, 64, 3), name="image")
    y = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(2, 3, strides=4, name="conv")(x))
    keras.Model(x, y).save(root / "tiny64.keras")
    return root


# ------------------------------------------------- the independent pipeline


def listed(folder):
    """Supported, non-hidden files under `folder`, sorted by relative path component-wise."""
    found = [p for p in Path(folder).rglob("*")
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".npy", ".npz"}
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def stored_pixels(path):
    """(H, W, C) as stored, decoded by Pillow: C = 1 gray, 3 RGB, 4 RGBA; a GIF's first frame."""
    with Image.open(path) as im:
        im.seek(0)
        a = np.asarray(im.convert("RGB") if im.mode == "P" else im)
    return (a[..., None] if a.ndim == 2 else a).astype(np.float64)


def to_channels(a, want):
    """The README's channel rules, in NumPy."""
    colour, alpha = (a[..., :-1], a[..., -1:]) if a.shape[-1] in (2, 4) else (a, None)
    if want in (1, 2) and colour.shape[-1] == 3:
        colour = (colour @ np.array([0.2989, 0.5870, 0.1140]))[..., None]
    if want in (3, 4) and colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    if want in (2, 4):
        colour = np.concatenate([colour, alpha if alpha is not None else np.full_like(colour[..., :1], 255)], -1)
    return colour.astype(np.float32)


def resized(x, size, mode="stretch", method="bilinear"):
    """stretch, crop (cover, cut the centre) and pad (fit inside, zero border) by definition."""
    import tensorflow as tf

    (h, w), (th, tw) = x.shape[:2], size
    if (h, w) == (th, tw):
        return x
    if mode == "stretch":
        return tf.image.resize(x, size, method=method).numpy()
    if mode == "crop":
        s = max(Fraction(th, h), Fraction(tw, w))
        ch, cw = max(th, floor(h * s + Fraction(1, 2))), max(tw, floor(w * s + Fraction(1, 2)))
        y = tf.image.resize(x, (ch, cw), method=method).numpy()
        top, left = (ch - th) // 2, (cw - tw) // 2
        return y[top : top + th, left : left + tw]
    s = min(Fraction(th, h), Fraction(tw, w))
    rh, rw = floor(h * s), floor(w * s)
    top, left = floor((th - h * s) / 2), floor((tw - w * s) / 2)
    out = np.zeros((th, tw, x.shape[2]), np.float32)
    out[top : top + rh, left : left + rw] = tf.image.resize(x, (rh, rw), method=method).numpy()
    return out


def prepared(paths, channels, size, mode="stretch", method="bilinear"):
    """The README's steps: decode, size (each channel on its own), channels."""
    return np.stack([to_channels(resized(stored_pixels(p).astype(np.float32), size, mode, method), channels)
                     for p in paths])


def read(path, name):
    with h5py.File(path, "r") as f:
        return f["activations"][name][()]


def sources_of(path):
    with h5py.File(path, "r") as f:
        return list(f["inputs/source"].asstr()[()])


# ---------------------------------------------------------------- images


def test_folder_of_mixed_images_with_vgg16_preprocessing(cli, zoo, photos, keras_model, tmp_path):
    """The issue's example: a folder of real-format images of mixed sizes, --preprocess vgg16."""
    import keras

    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "--layer", "block1_conv2", "--preprocess", "vgg16",
            "-o", out, photos)
    assert r.exit_code == 0, r.stderr
    files = listed(photos)
    assert [p.name for p in files] == ["B.bmp", "a.png", "c.jpg", "d_gray.png", "e_rgba.png", "f.gif", "g_gray.jpg"]
    assert sources_of(out) == [str(p) for p in files]
    x = keras.applications.vgg16.preprocess_input(prepared(files, 3, (32, 32)))
    expected = submodel_values(keras_model(zoo["transfer.keras"]), "vgg16/block1_conv2", x)
    np.testing.assert_allclose(read(out, "vgg16/block1_conv2"), expected, atol=2e-4, rtol=1e-5)
    with h5py.File(out, "r") as f:
        assert f.attrs["preprocess"] == "vgg16" and f.attrs["resize"] == "stretch"
        assert f.attrs["scale"] == 1.0 and f.attrs["offset"] == 0.0
        assert f.attrs["interpolation"] == "bilinear" and f.attrs["samples"] == 7
        assert "inputs/skipped" not in f


def test_decoded_pixels_match_pillow(cli, models, photos, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "-o", out, photos)
    assert r.exit_code == 0, r.stderr
    got, files = read(out, "ident"), listed(photos)
    np.testing.assert_allclose(got, prepared(files, 3, (32, 32)), atol=1e-4, rtol=1e-6)
    # the 32x32 RGBA PNG is not resampled: its RGB pixels arrive exactly
    rgba = [p.name for p in files].index("e_rgba.png")
    np.testing.assert_array_equal(got[rgba], stored_pixels(files[rgba])[..., :3])


@pytest.mark.parametrize("mode,method", [("crop", "bilinear"), ("pad", "bilinear"), ("crop", "nearest"),
                                         ("pad", "nearest"), ("stretch", "nearest"), ("pad", "bicubic"),
                                         ("stretch", "area"), ("stretch", "lanczos3")])
def test_resize_modes(cli, models, photos, tmp_path, mode, method):
    files = [photos / "a.png", photos / "c.jpg", photos / "d_gray.png"]  # 40x48, 50x30, 20x30
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "--resize", mode, "--interpolation", method,
            "-o", out, *files)
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(read(out, "ident"), prepared(files, 3, (32, 32), mode, method),
                               atol=1e-3, rtol=1e-5)
    with h5py.File(out, "r") as f:
        assert f.attrs["resize"] == mode and f.attrs["interpolation"] == method


@pytest.mark.parametrize("model,channels,size", [("gray32", 1, (32, 32)), ("rgba16", 4, (16, 16))])
def test_channel_conversions(cli, models, photos, tmp_path, model, channels, size):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models[model], "-l", "ident", "-o", out, photos)
    assert r.exit_code == 0, r.stderr
    got = read(out, "ident")
    assert got.shape == (7, *size, channels)
    np.testing.assert_allclose(got, prepared(listed(photos), channels, size), atol=1e-3, rtol=1e-5)
    if channels == 4:  # an image without alpha gets an opaque one; RGBA keeps its own
        names = [p.name for p in listed(photos)]
        assert np.all(got[names.index("a.png"), ..., 3] == 255)
        rgba = stored_pixels(photos / "e_rgba.png").astype(np.float32)
        np.testing.assert_allclose(got[names.index("e_rgba.png"), ..., 3],
                                   resized(rgba, size)[..., 3], atol=1e-3)


def test_channels_first_model_with_images_and_arrays(cli, models, photos, tmp_path):
    import keras

    files = [photos / "a.png", photos / "d_gray.png"]
    chw = np.random.default_rng(2).uniform(0, 255, (2, 3, 24, 20)).astype(np.float32)
    np.save(tmp_path / "chw.npy", chw)
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["chw"], "-l", "ident", "--preprocess", "vgg16", "-o", out,
            *files, tmp_path / "chw.npy")
    assert r.exit_code == 0, r.stderr
    raw = np.concatenate([prepared(files, 3, (24, 20)).transpose(0, 3, 1, 2), chw])
    expected = keras.applications.vgg16.preprocess_input(raw, data_format="channels_first")
    np.testing.assert_allclose(read(out, "ident"), expected, atol=1e-3, rtol=1e-5)


def test_images_feed_an_input_without_channel_axis(cli, models, photos, tmp_path):
    files = [photos / "a.png", photos / "sub" / "g_gray.jpg"]
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["plane28"], "-l", "ident", "-o", out, *files)
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(read(out, "ident"), prepared(files, 1, (28, 28))[..., 0], atol=1e-3, rtol=1e-5)


def test_input_of_any_size(cli, models, photos, tmp_path):
    files = [photos / "a.png", photos / "c.jpg"]
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["any_size"], "-l", "ident", "--size", "20x24", "-o", out, *files)
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(read(out, "ident"), prepared(files, 3, (20, 24)), atol=1e-3, rtol=1e-5)
    # without --size, images keep their size, which must then be the first image's
    r = cli("dump", "-m", models["any_size"], "-l", "ident", "-o", tmp_path / "b.h5", photos / "a.png", photos / "a.png")
    assert r.exit_code == 0, r.stderr
    np.testing.assert_array_equal(read(tmp_path / "b.h5", "ident"), prepared([photos / "a.png"] * 2, 3, (40, 48)))
    r = cli("dump", "-m", models["any_size"], "-l", "ident", "-o", tmp_path / "c.h5", *files)
    assert r.exit_code == 1
    line = error_line(r)
    assert str(photos / "c.jpg") in line and "--size" in line and "40x48" in line
    assert not (tmp_path / "c.h5").exists()


# ------------------------------------------------------ preprocessing


def test_scale_and_offset_apply_to_arrays(cli, models, tmp_path):
    x = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    np.save(tmp_path / "u8.npy", x)
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "--scale", "1/255", "--offset", "-0.5", "-o", out,
            tmp_path / "u8.npy")
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(read(out, "ident"), x / 255.0 - 0.5, atol=1e-6)
    with h5py.File(out, "r") as f:
        assert f.attrs["scale"] == pytest.approx(1 / 255, rel=1e-15) and f.attrs["offset"] == -0.5
        assert f.attrs["preprocess"] == "none"


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet", "inception_v3", "efficientnet"])
def test_keras_applications_preprocessing(cli, models, tmp_path, name):
    import importlib

    x = np.random.default_rng(6).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "unit.npy", x)
    out = tmp_path / "acts.h5"
    # --scale comes first: values in [0, 1] become raw pixel values for the preprocessing
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "--scale", "255", "--preprocess", name, "-o", out,
            tmp_path / "unit.npy")
    assert r.exit_code == 0, r.stderr
    module = importlib.import_module(f"keras.applications.{name}")
    expected = np.asarray(module.preprocess_input(x * np.float32(255)))
    np.testing.assert_allclose(read(out, "ident"), expected, atol=1e-4, rtol=1e-5)


def test_unknown_preprocessing_lists_the_valid_names(cli, models, photos):
    import types

    import keras

    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "--preprocess", "vgg", photos)
    assert r.exit_code == 2
    line = error_line(r)
    families = [n for n, m in vars(keras.applications).items()
                if isinstance(m, types.ModuleType) and hasattr(m, "preprocess_input") and n != "imagenet_utils"]
    assert len(families) >= 10
    for name in families:
        assert name in line
    assert "'vgg'" in line and "did you mean" in line


def test_interpolations_are_tensorflows():
    import tensorflow as tf

    from tensorprobe.inputs.options import INTERPOLATIONS

    methods = {getattr(tf.image.ResizeMethod, n) for n in dir(tf.image.ResizeMethod) if n.isupper()}
    assert set(INTERPOLATIONS) == methods


# ------------------------------------------------ many kinds of arguments


def test_globs_lists_and_stdin_in_one_dump(cli, models, photos, tmp_path):
    rows = np.random.default_rng(8).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    piped = np.random.default_rng(9).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, piped)
    (tmp_path / "list.txt").write_text(
        f"# chosen by hand\n\n{photos / 'c.jpg'}\n{photos / 'sub'}\n{tmp_path / 'rows.npy'}\n")
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "-b", "3", "-o", out,
            f"{photos}/**/*.png", f"@{tmp_path / 'list.txt'}", "-", input=buffer.getvalue())
    assert r.exit_code == 0, r.stderr
    pngs = [p for p in listed(photos) if p.suffix == ".png"]
    sub = listed(photos / "sub")
    expected_sources = ([str(p) for p in pngs] + [str(photos / "c.jpg")] + [str(p) for p in sub]
                        + [f"{tmp_path / 'rows.npy'}[{i}]" for i in range(3)] + ["<stdin>[0]", "<stdin>[1]"])
    assert sources_of(out) == expected_sources
    images = prepared(pngs + [photos / "c.jpg"] + sub, 3, (32, 32))
    np.testing.assert_allclose(read(out, "ident"), np.concatenate([images, rows, piped]), atol=1e-4, rtol=1e-6)


def test_folder_with_arrays_and_images(cli, models, photos, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "z").mkdir(parents=True)
    one = np.random.default_rng(10).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    np.save(folder / "m_one.npy", one)
    np.savez(folder / "z" / "pair.npz", image=np.stack([one * 0.5, one * 0.25]))
    (folder / "a.png").write_bytes((photos / "a.png").read_bytes())
    (folder / "n.jpg").write_bytes((photos / "c.jpg").read_bytes())
    (folder / "z" / "q.bmp").write_bytes((photos / "B.bmp").read_bytes())
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "-b", "2", "-o", out, folder)
    assert r.exit_code == 0, r.stderr
    assert sources_of(out) == [str(folder / "a.png"), str(folder / "m_one.npy"), str(folder / "n.jpg"),
                               f"{folder / 'z' / 'pair.npz'}[0]", f"{folder / 'z' / 'pair.npz'}[1]",
                               str(folder / "z" / "q.bmp")]
    a, n, q = prepared([photos / "a.png", photos / "c.jpg", photos / "B.bmp"], 3, (32, 32))
    expected = np.stack([a, one, n, one * 0.5, one * 0.25, q])
    np.testing.assert_allclose(read(out, "ident"), expected, atol=1e-4, rtol=1e-6)


def test_array_layouts_and_byte_orders(cli, models, tmp_path):
    rng = np.random.default_rng(14)
    x = rng.uniform(0, 255, (5, 32, 32, 3))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(x.astype(np.float32)))
    np.savez_compressed(tmp_path / "fortran.npz", image=np.asfortranarray(x[:2].astype(np.float64)))
    np.save(tmp_path / "big_endian.npy", x[0].astype(">f4"))  # one sample
    np.save(tmp_path / "u8.npy", x[:3].astype(np.uint8))
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "-b", "2", "-o", out, tmp_path / "fortran.npy",
            tmp_path / "fortran.npz", tmp_path / "big_endian.npy", tmp_path / "u8.npy")
    assert r.exit_code == 0, r.stderr
    expected = np.concatenate([x, x[:2], x[:1], x[:3].astype(np.uint8)]).astype(np.float32)
    np.testing.assert_array_equal(read(out, "ident"), expected)
    assert sources_of(out)[5:8] == [f"{tmp_path / 'fortran.npz'}[0]", f"{tmp_path / 'fortran.npz'}[1]",
                                    str(tmp_path / "big_endian.npy")]


# ------------------------------------------------------- several inputs


@pytest.fixture(scope="session")
def three_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(12)
    first = {"image": rng.uniform(0, 255, (3, 16, 16, 3)), "meta": rng.normal(size=(3, 5)),
             "seq": rng.normal(size=(3, 4, 2))}
    second = {"image": rng.uniform(0, 255, (16, 16, 3)), "meta": rng.normal(size=5), "seq": rng.normal(size=(4, 2))}
    np.savez(folder / "first.npz", **{k: v.astype(np.float32) for k, v in first.items()})
    np.savez_compressed(folder / "second.npz", **{k: v.astype(np.float32) for k, v in second.items()})
    x = {k: np.concatenate([first[k], second[k][None]]).astype(np.float32) for k in first}
    return folder, x


def test_three_input_model_fed_by_npz(cli, models, keras_model, three_inputs, tmp_path):
    folder, x = three_inputs
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["three"], "-l", "ident_image", "-l", "ident_meta", "-l", "ident_seq",
            "-l", "out", "-b", "3", "-o", out, folder / "first.npz", folder / "second.npz")
    assert r.exit_code == 0, r.stderr
    for name in ("image", "meta", "seq"):
        np.testing.assert_array_equal(read(out, f"ident_{name}"), x[name])
    model = keras_model(models["three"])
    np.testing.assert_allclose(read(out, "out"), np.asarray(model([x["image"], x["meta"], x["seq"]])),
                               atol=1e-4, rtol=1e-5)
    assert sources_of(out) == [f"{folder / 'first.npz'}[{i}]" for i in range(3)] + [str(folder / "second.npz")]


def test_three_input_model_fed_by_input_options(cli, models, keras_model, photos, tmp_path):
    files = listed(photos)
    rng = np.random.default_rng(13)
    meta, seq = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(7, 4, 2)).astype(np.float32)
    np.save(tmp_path / "meta.npy", meta)
    np.savez(tmp_path / "seq.npz", seq)  # one array: its key does not matter
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["three"], "-l", "ident_image", "-l", "out", "-o", out,
            "--input", f"seq={tmp_path / 'seq.npz'}", "--input", f"image={photos}",
            "--input", f"meta={tmp_path / 'meta.npy'}", "--preprocess", "mobilenet_v2")
    assert r.exit_code == 0, r.stderr
    import keras

    image = keras.applications.mobilenet_v2.preprocess_input(prepared(files, 3, (16, 16)))
    np.testing.assert_allclose(read(out, "ident_image"), image, atol=1e-5)
    # the preprocessing applies to the image input only; meta and seq pass unchanged
    expected = np.asarray(keras_model(models["three"])([image, meta, seq]))
    np.testing.assert_allclose(read(out, "out"), expected, atol=1e-4, rtol=1e-4)
    assert sources_of(out) == [f"image={p}; meta={tmp_path / 'meta.npy'}[{i}]; seq={tmp_path / 'seq.npz'}[{i}]"
                               for i, p in enumerate(files)]


# ------------------------------------------------------------ bad images


def _bad_folder(tmp_path, photos):
    folder = tmp_path / "some_bad"
    folder.mkdir()
    (folder / "good1.png").write_bytes((photos / "a.png").read_bytes())
    (folder / "good2.jpg").write_bytes((photos / "c.jpg").read_bytes())
    # seeded: some random bytes read as a frame header declaring a huge image (another error)
    (folder / "junk.jpg").write_bytes(b"\xff\xd8\xff" + np.random.default_rng(0).bytes(300))
    (folder / "notimg.gif").write_text("hello")
    png = (photos / "e_rgba.png").read_bytes()
    (folder / "trunc.png").write_bytes(png[: len(png) // 2])
    return folder


def test_bad_image_stops_the_dump_and_names_the_file(cli, models, photos, tmp_path):
    folder = _bad_folder(tmp_path, photos)
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "-o", out, folder)
    assert r.exit_code == 1
    assert error_line(r).startswith(f"error: {folder / 'junk.jpg'}: not a readable image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["some_bad"]


def test_skip_bad_records_what_it_skipped(cli, models, photos, tmp_path):
    folder = _bad_folder(tmp_path, photos)
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "--skip-bad", "-b", "2", "-o", out, folder)
    assert r.exit_code == 0, r.stderr
    good = [folder / "good1.png", folder / "good2.jpg"]
    assert sources_of(out) == [str(p) for p in good]
    np.testing.assert_allclose(read(out, "ident"), prepared(good, 3, (32, 32)), atol=1e-4, rtol=1e-6)
    bad = [folder / "junk.jpg", folder / "notimg.gif", folder / "trunc.png"]
    with h5py.File(out, "r") as f:
        skipped = f["inputs/skipped"].asstr()[()]
        assert f.attrs["samples"] == 2
    assert [row[0] for row in skipped] == [str(p) for p in bad]
    assert all(row[1].startswith("not a readable image (") for row in skipped)
    assert [line.split(": ")[0] for line in r.stderr.splitlines() if line.startswith("skipped ")] == \
        [f"skipped {p}" for p in bad]
    # nothing readable left: an error, and no output
    r = cli("dump", "-m", models["rgb32"], "-l", "ident", "--skip-bad", "-o", tmp_path / "none.h5", *bad)
    assert r.exit_code == 1 and "no input could be read" in error_line(r)
    assert not (tmp_path / "none.h5").exists()


# --------------------------------------------------- one line per mistake


def _error_files(tmp, photos):
    (tmp / "empty").mkdir()
    (tmp / "only_text").mkdir()
    (tmp / "only_text" / "readme.txt").write_text("x")
    (tmp / "objects").mkdir()
    np.save(tmp / "objects" / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "list.txt").write_text(f"{photos / 'a.png'}\n{tmp / 'gone.png'}\n")
    (tmp / "notes.csv").write_text("hello")
    (tmp / "notes.txt").write_text("hello")
    png = (photos / "a.png").read_bytes()
    (tmp / "trunc.png").write_bytes(png[: len(png) // 3])
    np.savez(tmp / "wrong_keys.npz", image=np.zeros((2, 16, 16, 3), np.float32), meta=np.zeros((2, 5), np.float32),
             extra=np.zeros((2, 4, 2), np.float32))
    np.savez(tmp / "uneven.npz", image=np.zeros((2, 16, 16, 3), np.float32), meta=np.zeros((3, 5), np.float32),
             seq=np.zeros((2, 4, 2), np.float32))
    np.save(tmp / "meta3.npy", np.zeros((3, 5), np.float32))
    np.save(tmp / "seq2.npy", np.zeros((2, 4, 2), np.float32))
    np.save(tmp / "img2.npy", np.zeros((2, 16, 16, 3), np.float32))
    np.save(tmp / "vec.npy", np.zeros((2, 6), np.float32))
    np.savez(tmp / "whole.npz", image=np.zeros((2, 32, 32, 3), np.float32))
    data = (tmp / "whole.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(data[: len(data) // 2])


THREE = "image (None, 16, 16, 3) float32, meta (None, 5) float32, seq (None, 4, 2) float32"
R = ["-m", "{m:rgb32}", "-l", "ident"]
T = ["-m", "{m:three}", "-l", "out"]
ERROR_CASES = [
    ("empty-folder", R + ["{tmp}/empty"], 2, "empty': the folder holds no .npy, .npz or image file"),
    ("folder-without-inputs", R + ["{tmp}/only_text"], 2, "only_text': the folder holds no"),
    ("glob-matches-nothing", R + ["{tmp}/empty/*.png"], 2, "*.png': no file matches the pattern"),
    ("list-missing", R + ["@{tmp}/nolist.txt"], 2, "list file '{tmp}/nolist.txt' does not exist"),
    ("list-line-missing", R + ["@{tmp}/list.txt"], 2, "gone.png' (line 2 of {tmp}/list.txt) does not exist"),
    ("scale-zero-division", R + ["--scale", "1/0", "{photo:a.png}"], 2, "--scale"),
    ("scale-not-a-number", R + ["--scale", "half", "{photo:a.png}"], 2, "--scale"),
    ("size-malformed", R + ["--size", "big", "{photo:a.png}"], 2, "--size"),
    ("size-conflicts-with-model", R + ["--size", "20x20", "{photo:a.png}"], 2, "--size 20x20"),
    ("input-malformed", R + ["--input", "image", "{photo:a.png}"], 2, "--input"),
    ("arguments-and-input", R + ["--input", "image={photo:a.png}", "{photo:a.png}"], 2, "not both"),
    ("no-input", R, 2, "no input given"),
    ("stdin-twice", R + ["-", "-"], 2, "standard input can be read only once"),
    ("device-as-input", R + ["/dev/null"], 2, "input '/dev/null' is not a regular file"),
    ("preprocess-non-image-input", ["-m", "{zoo:seq.keras}", "-l", "d1", "--preprocess", "vgg16", "{tmp}/vec.npy"],
     2, "--preprocess vgg16"),
    ("truncated-image", R + ["{tmp}/trunc.png"], 1, "{tmp}/trunc.png: not a readable image"),
    ("unknown-file-kind", R + ["{tmp}/notes.csv"], 1, "{tmp}/notes.csv: not a .npy, .npz, .txt or image file"),
    ("text-to-image-model", R + ["{tmp}/notes.txt"], 1, "{tmp}/notes.txt: a text file feeds only a string input"),
    ("object-npy-in-folder", R + ["{tmp}/objects"], 1, "o.npy: holds Python objects, which are never unpickled"),
    ("images-to-vector-model", ["-m", "{zoo:seq.keras}", "-l", "d1", "{photo:a.png}"], 1, "images cannot feed input"),
    ("truncated-npz", R + ["{tmp}/cut.npz"], 1, "{tmp}/cut.npz: not a readable .npz file"),
    ("no-resize-mismatch", R + ["--no-resize", "{photo:a.png}"], 1, "a.png: image is 40x48 (height x width)"),
    ("npz-wrong-keys", T + ["{tmp}/wrong_keys.npz"], 1, THREE),
    ("npz-uneven-rows", T + ["{tmp}/uneven.npz"], 1, "uneven.npz: its arrays hold different numbers"),
    ("npy-to-multi-input", T + ["{tmp}/img2.npy"], 2, "--input NAME=PATH"),
    ("input-unknown-name", T + ["--input", "picture={tmp}/img2.npy"], 2, "no input 'picture'; its inputs are " + THREE),
    ("input-missing-one", T + ["--input", "image={tmp}/img2.npy", "--input", "meta={tmp}/meta3.npy"], 2,
     "nothing given for 'seq'"),
    ("input-rows-differ", T + ["--input", "image={tmp}/img2.npy", "--input", "meta={tmp}/meta3.npy",
                               "--input", "seq={tmp}/seq2.npy"], 1, "different numbers of samples: image 2, meta 3, seq 2"),
    ("input-path-missing", T + ["--input", "image={tmp}/nope.npy"], 2, "--input image '{tmp}/nope.npy' does not exist"),
]


@pytest.mark.parametrize("args,status,text", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_inputs_get_one_error_line(cli, zoo, models, photos, tmp_path, args, status, text):
    _error_files(tmp_path, photos)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def fill(a):
        a = a.replace("{tmp}", str(tmp_path))
        for key, table in (("{m:", models), ("{zoo:", zoo)):
            if key in a:
                start = a.index(key)
                end = a.index("}", start)
                a = a[:start] + str(table[a[start + len(key) : end]]) + a[end + 1 :]
        if "{photo:" in a:
            start = a.index("{photo:")
            end = a.index("}", start)
            a = a[:start] + str(photos / a[start + 7 : end]) + a[end + 1 :]
        return a

    out = tmp_path / "out.h5"
    r = cli("dump", "-o", out, *[fill(a) for a in args], env={"TENSORPROBE_MODEL": None})
    assert r.exit_code == status, r.stderr
    assert fill(text) in error_line(r)
    assert r.stdout == ""
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written


# ------------------------------------------------- progress and memory


def test_progress_bar_on_a_terminal(many, tmp_path):
    status, shown = run_on_terminal(["dump", "-m", many / "tiny64.keras", "-l", "gap", "-b", "8",
                                     "-o", tmp_path / "a.h5", many / "n200" / "images"], columns=120, stdout=False)
    assert status == 0
    assert "dumping" in shown and "200/200" in shown and "samples/s" in shown
    assert f"wrote {tmp_path / 'a.h5'}" in screen_lines(shown)


def test_no_progress_bar_with_quiet_even_on_a_terminal(cli, models, photos, tmp_path, monkeypatch):
    from rich.console import Console

    # stderr as a colour terminal 100 columns wide, whatever TERM and the screen say
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")
    r = cli("dump", "-q", "-m", models["rgb32"], "-l", "gap", "-o", tmp_path / "a.h5", photos)
    assert r.exit_code == 0 and r.stderr == "" and r.stdout == ""
    # the same run without -q shows the size estimate, then starts rich's live display (it
    # hides the cursor while it runs)
    r = cli("dump", "-m", models["rgb32"], "-l", "gap", "-o", tmp_path / "b.h5", photos)
    assert r.exit_code == 0 and r.stderr.startswith("writing about ")
    assert "\n\x1b[?25l\x1b[?25h" in r.stderr


def test_memory_stays_flat_as_inputs_grow(many, tmp_path):
    """Peak resident memory of a dump over 200 and over 4000 images plus .npy rows (4000 rows
    are 196 MB of float32 arrays and as much again of decoded images)."""
    env = {**os.environ}
    env.pop("TENSORPROBE_DEBUG", None)
    procs = {}
    for n in (200, 4000):
        folder = many / f"n{n}"
        p = subprocess.Popen([str(BIN), "dump", "-q", "-m", str(many / "tiny64.keras"), "-l", "gap",
                              "-o", str(tmp_path / f"{n}.h5"), str(folder / "images"), str(folder / "rows.npy")],
                             env=env, stderr=subprocess.PIPE)
        procs[p.pid] = (n, p)
    peaks = {}
    for _ in range(len(procs)):
        pid, status, usage = os.wait4(-1, 0)
        n, p = procs[pid]
        p.returncode = os.waitstatus_to_exitcode(status)
        assert p.returncode == 0, p.stderr.read()
        peaks[n] = usage.ru_maxrss / 1024  # KiB on Linux -> MiB
    for n in (200, 4000):
        with h5py.File(tmp_path / f"{n}.h5", "r") as f:
            assert f.attrs["samples"] == 2 * n
    assert peaks[4000] - peaks[200] < 60, peaks
