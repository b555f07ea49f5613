"""Hostile inputs (issue 29 items 10 and 11, the input side): special files where files are
meant, and files that declare far more than they hold. Every crafted file is built here; each
refusal is one `error:` line naming the file, the limit and the variable that raises it, and
comes before anything large is allocated or anything blocks.
"""

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import error_line

BIN = Path(sys.executable).parent / "tensorprobe"
PIXELS = "TENSORPROBE_MAX_IMAGE_PIXELS"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model that takes images of any size (so nothing resizes them) and one of vectors."""
    import keras

    folder = tmp_path_factory.mktemp("hostile_models")
    x = keras.Input((None, None, 3), name="image")
    keras.Model(x, keras.layers.GlobalAveragePooling2D(name="gap")(x)).save(folder / "any.keras")
    v = keras.Input((4,), name="v")
    keras.Model(v, keras.layers.Dense(2, name="d")(v)).save(folder / "vec.keras")
    return folder


@contextmanager
def deadline(seconds=60):
    """Fail instead of hanging when a read blocks (the bug these tests guard against)."""
    def expire(signum, frame):
        raise AssertionError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def png_bomb(path, width, height):
    """A PNG whose header declares width x height RGB pixels, with ten rows of data: a few
    hundred bytes (zlib makes the IDAT)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress((b"\0" + bytes(3 * width)) * 10, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def forged_npy(path, shape, dtype="<f4"):
    """A .npy header declaring `shape`, followed by 64 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    path.write_bytes(header.getvalue() + bytes(64))  # the header as NumPy writes it, magic included
    return path


# ---------------------------------------------------------------- decompression bombs


def test_png_bomb_refused_from_its_header(cli, model, tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 1000
    # Pillow refuses it too, at the same number of pixels: the default limit is Pillow's
    with pytest.raises(Image.DecompressionBombError, match=r"\(400000000 pixels\) exceeds limit of 178956970 "):
        Image.open(bomb)
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", model / "any.keras", "-l", "gap", "-o", out, bomb)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {bomb}: the image is 20000x20000 (height x width), 400,000,000 pixels, "
                             "more than the limit of 178,956,970 pixels; set TENSORPROBE_MAX_IMAGE_PIXELS to "
                             "raise it (0 for none), for a file you trust")
    assert not out.exists()


def test_png_bomb_is_skipped_with_skip_bad(cli, model, tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png", 20000, 20000)
    pixels = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "good.png")
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", model / "any.keras", "-l", "gap", "--skip-bad", "-o", out, tmp_path / "good.png", bomb)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert [s.decode() for s in f["inputs/source"][()]] == [str(tmp_path / "good.png")]
        np.testing.assert_allclose(f["activations/gap"][0], pixels.reshape(-1, 3).mean(axis=0), rtol=1e-6)
        path, reason = (v.decode() for v in f["inputs/skipped"][0])
        assert path == str(bomb) and reason.startswith("the image is 20000x20000 (height x width)")


def _images(folder):
    """One small image of each format, saved by Pillow, with a JPEG carrying an EXIF block
    and a progressive one (segments before the frame header)."""
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010E] = "x" * 5000  # ImageDescription: a long APP1 segment before the frame
    saved = {"a.png": {}, "b.gif": {}, "c.bmp": {}, "d.jpg": {"exif": exif}, "e.jpg": {"progressive": True}}
    for name, options in saved.items():
        image.save(folder / name, **options)
    return [folder / name for name in saved]


def test_every_format_declares_its_size_as_pillow_reads_it(tmp_path):
    from tensorprobe.inputs.images import declared_size

    for path in _images(tmp_path):
        with Image.open(path) as im, open(path, "rb") as f:
            assert declared_size(f) == (im.height, im.width), path.name


def test_pixel_limit_applies_to_each_format_and_can_be_raised(cli, model, tmp_path):
    out = tmp_path / "a.h5"
    for path in _images(tmp_path):
        r = cli("dump", "-m", model / "any.keras", "-l", "gap", "-o", out, "--overwrite", path, env={PIXELS: "119"})
        assert r.exit_code == 1, path.name
        assert error_line(r) == (f"error: {path}: the image is 10x12 (height x width), 120 pixels, more than the "
                                 f"limit of 119 pixels; set {PIXELS} to raise it (0 for none), for a file you trust")
        for allowed in ("120", "0"):
            r = cli("dump", "-m", model / "any.keras", "-l", "gap", "-o", out, "--overwrite", path,
                    env={PIXELS: allowed})
            assert r.exit_code == 0, r.stderr
            with Image.open(path) as im, h5py.File(out, "r") as f:
                if path.suffix != ".jpg":  # TensorFlow's JPEG decoder may differ from Pillow's by a unit
                    expected = np.asarray(im.convert("RGB"), np.float64).reshape(-1, 3).mean(axis=0)
                    np.testing.assert_allclose(f["activations/gap"][0], expected, rtol=1e-5)
    r = cli("dump", "-m", model / "any.keras", "-l", "gap", "-o", tmp_path / "b.h5", _images(tmp_path)[0],
            env={PIXELS: "many"})
    assert r.exit_code == 2
    assert error_line(r) == f"error: {PIXELS} 'many': expected a whole number"


def test_size_is_bounded_before_the_model_loads(cli, model, tmp_path):
    import tensorprobe
    from tensorprobe.errors import UsageError

    r = cli("dump", "-m", model / "any.keras", "-l", "gap", "--size", "100000x100000", "-o", tmp_path / "a.h5",
            "x.png")
    assert r.exit_code == 2
    assert error_line(r) == ("error: --size 100000x100000: 10,000,000,000 pixels, more than the limit of "
                             f"178,956,970 pixels; set {PIXELS} to raise it (0 for none)")
    # (the API's preparation options are checked before its error names are applied)
    with pytest.raises(UsageError, match=r"^(--)?size 100000x100000: 10,000,000,000 pixels, more than the limit"):
        tensorprobe.activations(model / "any.keras", np.zeros((1, 4, 4, 3)), layers=["gap"], size=(100000, 100000))


@pytest.mark.parametrize("shape, size", [((2**40, 4), 2**40 * 16), ((2**62, 2**62), 2**124 * 4)])
def test_npy_header_declaring_too_much_is_refused(cli, model, tmp_path, shape, size):
    """(2**62, 2**62) is 2**126 bytes: a product in int64 would wrap around to 0."""
    path = forged_npy(tmp_path / "big.npy", shape)
    r = cli("dump", "-m", model / "vec.keras", "-l", "d", "-o", tmp_path / "a.h5", path)
    assert r.exit_code == 1
    dims = ", ".join(map(str, shape))
    assert error_line(r) == (f"error: {path}: its header declares ({dims}) float32, {size:,} bytes of data, more "
                             "than the limit of 17,179,869,184 bytes (16.0 GiB); set TENSORPROBE_MAX_ARRAY_BYTES "
                             "to raise it (0 for none), for a file you trust")


def test_array_limit_on_stdin_and_npz(cli, model, tmp_path):
    limit = {"TENSORPROBE_MAX_ARRAY_BYTES": "100"}
    x = np.random.default_rng(3).normal(size=(7, 4)).astype(np.float32)  # 112 bytes
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", v=x)
    for source, label, data in (("-", "<stdin>", (tmp_path / "x.npy").read_bytes()),
                                (tmp_path / "x.npz", f"{tmp_path / 'x.npz'} (array 'v')", None)):
        r = cli("dump", "-m", model / "vec.keras", "-l", "d", "-o", tmp_path / "a.h5", source, env=limit, input=data)
        assert r.exit_code == 1
        assert error_line(r) == (f"error: {label}: its header declares (7, 4) float32, 112 bytes of data, more "
                                 "than the limit of 100 bytes; set TENSORPROBE_MAX_ARRAY_BYTES to raise it "
                                 "(0 for none), for a file you trust")
    r = cli("dump", "-m", model / "vec.keras", "-l", "d", "-o", tmp_path / "a.h5", tmp_path / "x.npz",
            env={"TENSORPROBE_MAX_ARRAY_BYTES": "112"})
    assert r.exit_code == 0, r.stderr


def npz_bomb(path, rows):
    """An .npz holding one float32 member of (rows, 4) zeros, deflated (about 1000:1)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (rows, 4)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("v.npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        left = rows * 16
        while left:
            member.write(bytes(min(left, 1 << 22)))
            left -= min(left, 1 << 22)
    return path


def test_npz_member_inflating_past_the_ratio_is_refused(cli, model, tmp_path, monkeypatch):
    from tensorprobe.inputs import npy

    bomb = npz_bomb(tmp_path / "bomb.npz", 2**23)  # 128 MiB of zeros in about 130 KB
    with zipfile.ZipFile(bomb) as z:
        info = z.getinfo("v.npy")
    ratio = info.file_size / info.compress_size
    assert ratio > 1000 and os.path.getsize(bomb) < 200_000
    # in batches of 2**20 rows: the 8 Mi rows in 8 model calls, not 262,144 of the default 32
    r = cli("dump", "-m", model / "vec.keras", "-l", "d", "-b", 2**20, "-o", tmp_path / "a.h5", bomb)
    assert r.exit_code == 0, r.stderr  # below TENSORPROBE_MAX_UNPACKED (256M) a member inflates as it likes
    monkeypatch.setenv("TENSORPROBE_MAX_UNPACKED", "64M")
    r = cli("dump", "-m", model / "vec.keras", "-l", "d", "-o", tmp_path / "b.h5", bomb)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {bomb}: its member 'v.npy' would unpack to {info.file_size:,} bytes from "
                             f"{info.compress_size:,}, a ratio of {ratio:,.0f}: a decompression bomb or a damaged "
                             f"file. Past 67,108,864 bytes an archive may inflate at most 200 times; set "
                             "TENSORPROBE_MAX_UNPACKED or TENSORPROBE_MAX_INFLATE_RATIO to raise that, for a file "
                             "you trust")
    monkeypatch.setenv("TENSORPROBE_MAX_INFLATE_RATIO", "0")
    arrays = npy.open_npz(bomb)
    assert arrays["v"].shape == (2**23, 4)


# ---------------------------------------------------------------- special files


def test_fifos_and_devices_are_refused_without_blocking(cli, model, tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "in.npy")
    list_fifo = tmp_path / "list"
    os.mkfifo(list_fifo)
    base = ["dump", "-m", model / "vec.keras", "-l", "d", "-o", tmp_path / "a.h5"]
    cases = [
        ([fifo], f"error: input '{fifo}' is not a regular file; pipe a .npy to '-' instead", 2),
        ([folder], f"error: {folder / 'in.npy'}: not a regular file (a named pipe)", 1),
        ([f"@{list_fifo}"], f"error: input '@{list_fifo}': not a regular file (a named pipe)", 2),
        (["@/dev/zero"], "error: input '@/dev/zero': not a regular file (a character device)", 2),
        (["--input", f"v=@{list_fifo}"], f"error: --input v '@{list_fifo}': not a regular file (a named pipe)", 2),
    ]
    with deadline():
        for args, line, status in cases:
            r = cli(*base, *args)
            assert r.exit_code == status, r.stderr
            assert error_line(r) == line
        np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
        r = cli(*base, "--gradients", "--target", "loss:mse", "--labels", fifo, tmp_path / "x.npy")
        assert r.exit_code == 1
        assert error_line(r) == f"error: --labels '{fifo}': not a regular file (a named pipe)"
    from tensorprobe.limits import open_regular
    from tensorprobe.errors import InputError

    with deadline(), pytest.raises(InputError, match=r"not a regular file \(a named pipe\)$"):
        open_regular(fifo)


def test_list_file_is_read_with_a_bound(cli, model, tmp_path):
    x = np.zeros((2, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'x.npy'}\n" * 40)
    size = listing.stat().st_size
    base = ["dump", "-m", model / "vec.keras", "-l", "d", "-o", tmp_path / "a.h5", f"@{listing}"]
    r = cli(*base, env={"TENSORPROBE_MAX_LIST_BYTES": str(size - 1)})
    assert r.exit_code == 2
    assert error_line(r) == (f"error: input '@{listing}': the list file is too long, more than the limit of "
                             f"{size - 1:,} bytes; set TENSORPROBE_MAX_LIST_BYTES to raise it (0 for none), "
                             "for a file you trust")
    r = cli(*base, env={"TENSORPROBE_MAX_LIST_BYTES": str(size)})
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["activations/d"].shape == (80, 2)


def test_pattern_does_not_follow_linked_folders(cli, model, tmp_path):
    """`**` over a folder that links to itself twice: glob.glob would list 2**40 paths (it
    follows the links); the pattern lists each file once, as a folder argument does."""
    loop = tmp_path / "loop"
    (loop / "sub").mkdir(parents=True)
    (loop / "a").symlink_to(".")
    (loop / "sub" / "up").symlink_to("..")
    rows = {"x.npy": np.arange(8, dtype=np.float32).reshape(2, 4), "sub/y.npy": np.ones((1, 4), np.float32)}
    for name, array in rows.items():
        np.save(loop / name, array)
    out = tmp_path / "a.h5"
    with deadline():
        r = cli("dump", "-m", model / "vec.keras", "-l", "d", "-o", out, f"{loop}/**/*.npy")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert [s.decode() for s in f["inputs/source"][()]] == [
            f"{loop}/sub/y.npy[0]", f"{loop}/x.npy[0]", f"{loop}/x.npy[1]"]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_opening_inputs_stops_on_a_signal(model, tmp_path, signum, status):
    """300,000 inputs on a list take tens of seconds to list and open: a signal must end the
    command at once, with the status of the signal, and leave no output behind."""
    np.save(tmp_path / "one.npy", np.zeros((1, 4), np.float32))
    (tmp_path / "long.txt").write_text("one.npy\n" * 300_000)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.Popen([str(BIN), "dump", "-m", str(model / "vec.keras"), "-l", "d", "-o", "a.h5", "@long.txt"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        time.sleep(12)  # the model is loaded (a few seconds); the inputs are being opened
        assert p.poll() is None, p.communicate()
        p.send_signal(signum)
        sent = time.monotonic()
        _, stderr = p.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == status, stderr
    assert stderr.decode().strip().splitlines()[-1] == "error: interrupted"
    assert elapsed < 5
    assert sorted(os.listdir(tmp_path)) == ["long.txt", "one.npy"]


def test_help_names_every_limit(cli):
    from tensorprobe import limits

    text = " ".join(cli("dump", "--help").stdout.split())
    for limit in limits.ALL:
        assert limit.variable in text
    assert "TENSORPROBE_MAX_IMAGE_PIXELS (pixels of an image or --size; default 178956970)" in text
    assert limits.IMAGE_PIXELS.default == 178956970 and limits.ARRAY_BYTES.default == 16 << 30


def test_gif_frames_count_in_all(cli, model, tmp_path):
    """TensorFlow's GIF decoder allocates every frame, even when only the first is used."""
    rng = np.random.default_rng(4)
    frames = [Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)) for _ in range(5)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with Image.open(path) as im:
        areas = []
        for i in range(im.n_frames):
            im.seek(i)
            left, top, right, bottom = im.dispose_extent if hasattr(im, "dispose_extent") else (0, 0, *im.size)
            areas.append((right - left) * (bottom - top))
    total = sum(areas)
    assert total > 30 * 40
    r = cli("dump", "-m", model / "any.keras", "-l", "gap", "-o", tmp_path / "a.h5", path, env={PIXELS: str(total - 1)})
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: the animation is 30x40 (height x width), its frames {total:,} pixels "
                             f"in all, more than the limit of {total - 1:,} pixels; set {PIXELS} to raise it "
                             "(0 for none), for a file you trust")
    r = cli("dump", "-m", model / "any.keras", "-l", "gap", "-o", tmp_path / "a.h5", path, env={PIXELS: str(total)})
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        first = np.asarray(Image.open(path).convert("RGB"), np.float64)
        np.testing.assert_allclose(f["activations/gap"][0], first.reshape(-1, 3).mean(axis=0), rtol=1e-5)
