"""Every row written, or the dump fails: a writer slower than the compute, many batch sizes and
row counts, gzip:9 on a write-heavy layer, shards run side by side then merged, files whose
rows disagree, and the writer's own check of the rows.

Every value is computed a second time by Keras itself (a sub-model from the model's input);
every row source is spelt out here from the input's name.
"""

import json
import os
import shutil
import subprocess
import sys
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import error_line

BIN = Path(sys.executable).parent / "tensorprobe"
ROWS = 37
LAYERS = ("wide", "narrow", "head")  # wide: 32x32x64 float32, 256 KiB a row


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A small CNN whose first layer writes much more than it computes, 37 input rows, and
    every layer's output for them as Keras computes it."""
    import keras

    L = keras.layers
    folder = tmp_path_factory.mktemp("rows")
    keras.utils.set_random_seed(11)
    x = keras.Input((32, 32, 3), name="image")
    y = L.Conv2D(64, 3, padding="same", activation="relu", name="wide")(x)
    y = L.MaxPooling2D(4, name="pool")(y)
    y = L.Conv2D(4, 3, name="narrow")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    model = keras.Model(x, L.Dense(3, name="head")(y), name="tiny")
    model.save(folder / "tiny.keras")
    data = np.random.default_rng(12).uniform(0, 1, (ROWS, 32, 32, 3)).astype("float32")
    np.save(folder / "x.npy", data)
    reference = {name: np.asarray(keras.Model(model.input, model.get_layer(name).output)(data, training=False))
                 for name in LAYERS}
    return {"model": folder / "tiny.keras", "x": folder / "x.npy", "data": data, "reference": reference}


def layer_args(tiny, *layers):
    args = ["-m", tiny["model"]]
    for layer in layers or LAYERS:
        args += ["-l", layer]
    return args


def read(path):
    """(row sources, {layer: rows}, root attributes) of a dump, read with h5py alone."""
    with h5py.File(path, "r") as f:
        values = {name: f["activations"][name][()] for name in f["activations"]}
        return list(f["inputs/source"].asstr()[()]), values, dict(f.attrs)


def check_every_row(path, tiny, rows=ROWS, x=None):
    sources, values, attrs = read(path)
    x = x or tiny["x"]
    assert sources == [f"{x}[{i}]" for i in range(rows)]
    assert attrs["complete"] and attrs["samples"] == rows
    assert sorted(values) == sorted(LAYERS)
    for name, rows_written in values.items():
        np.testing.assert_allclose(rows_written, tiny["reference"][name][:rows], rtol=1e-5, atol=1e-5,
                                   err_msg=name)


@pytest.fixture
def slow_writer(monkeypatch):
    """Make every HDF5 append of DumpWriter take at least `delay` seconds longer; returns a
    setter for the delay. The compute then runs ahead, and the queue to the writer is full
    when the last batch is computed."""
    from tensorprobe import store

    append = store.DumpWriter.append
    delay = {"s": 0.0}

    def slow(self, sources, arrays):
        time.sleep(delay["s"])
        return append(self, sources, arrays)

    monkeypatch.setattr(store.DumpWriter, "append", slow)
    return lambda seconds: delay.__setitem__("s", seconds)


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".partial"))


class Deadlock(Exception):
    pass


def within(seconds, function):
    """Call `function` (in the main thread: the CLI installs signal handlers) and return its
    result; past `seconds`, SIGALRM raises Deadlock in it instead of letting it hang."""

    def alarm(signum, frame):
        raise Deadlock(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return function()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- a writer behind the compute


def test_a_slow_writer_loses_no_row(cli, tiny, slow_writer, tmp_path):
    slow_writer(0.25)  # more than the 0.1 s the writer's queue was once given before being emptied
    out = tmp_path / "slow.h5"
    r = cli("dump", *layer_args(tiny), "-b", "4", "-q", "-o", out, tiny["x"])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    check_every_row(out, tiny)


@pytest.mark.parametrize("failing_batch", [2, 10], ids=["early", "last"])
def test_a_writer_that_fails_while_behind_ends_the_dump(cli, tiny, monkeypatch, tmp_path, failing_batch):
    """The writer fails with the queue full (early) or after the last batch was computed
    (last): one error line, no file, and no wait for the batches that are left."""
    from tensorprobe import store
    from tensorprobe.errors import WriteError

    append = store.DumpWriter.append
    calls = []

    def failing(self, sources, arrays):
        calls.append(len(sources))
        time.sleep(0.2)
        if len(calls) == failing_batch:
            raise WriteError(f"--output '{self.output}': write failed: disk on fire")
        return append(self, sources, arrays)

    monkeypatch.setattr(store.DumpWriter, "append", failing)
    out = tmp_path / "failed.h5"
    r = within(120, lambda: cli("dump", *layer_args(tiny), "-b", "4", "-q", "-o", out, tiny["x"]))
    assert not isinstance(r.exception, Deadlock)
    assert r.exit_code == 1
    assert error_line(r) == f"error: --output '{out}': write failed: disk on fire"
    assert len(calls) == failing_batch  # nothing written after the failure
    assert not out.exists() and leftovers(tmp_path) == []


SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(rows=st.integers(1, 24), batch=st.integers(1, 9), delay=st.sampled_from([0.0, 0.03, 0.12]))
def test_every_batch_size_and_row_count(cli, tiny, slow_writer, tmp_path, rows, batch, delay):
    x = tmp_path / f"x{rows}.npy"
    np.save(x, tiny["data"][:rows])
    slow_writer(delay)
    out = tmp_path / "h.h5"
    r = cli("dump", *layer_args(tiny), "-b", batch, "-q", "--overwrite", "-o", out, x)
    assert r.exit_code == 0, r.stderr
    check_every_row(out, tiny, rows, x)


def test_gzip_9_on_a_write_heavy_layer_keeps_every_row(cli, tiny, tmp_path):
    """gzip level 9 on 256 KiB rows: the writer is far behind the compute at the end."""
    r = cli("dump", *layer_args(tiny), "-b", "8", "-q", "--compression", "gzip:9", "-o", tmp_path / "g.h5", tiny["x"])
    assert r.exit_code == 0, r.stderr
    r = cli("dump", *layer_args(tiny), "-b", "8", "-q", "-o", tmp_path / "plain.h5", tiny["x"])
    assert r.exit_code == 0, r.stderr
    check_every_row(tmp_path / "g.h5", tiny)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f["activations/wide"].compression == "gzip" and f["activations/wide"].compression_opts == 9
    gz, plain = read(tmp_path / "g.h5"), read(tmp_path / "plain.h5")
    assert gz[0] == plain[0]
    for name in LAYERS:  # the same batches: the same values, compressed without loss
        np.testing.assert_array_equal(gz[1][name], plain[1][name])


def test_three_shards_side_by_side_merge_to_the_single_dump(tiny, cli, tmp_path):
    """Three worker processes at once, gzip:9, each with its writer behind; merged (virtual and
    copied), row by row equal to a single uncompressed dump."""
    common = ["dump", *map(str, layer_args(tiny)), "-b", "4", "-q", "--compression", "gzip:9"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [subprocess.Popen([str(BIN), *common, "--shard", f"{k}/3", "-o", str(tmp_path / f"part-{k}.h5"),
                                 str(tiny["x"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
               for k in range(3)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr.decode()
    for k in range(3):
        start, stop = k * ROWS // 3, (k + 1) * ROWS // 3
        sources, values, attrs = read(tmp_path / f"part-{k}.h5")
        assert sources == [f"{tiny['x']}[{i}]" for i in range(start, stop)]
        assert list(attrs["shard_rows"]) == [start, stop] and attrs["samples"] == stop - start
        assert all(len(v) == stop - start for v in values.values())
    r = cli("dump", *layer_args(tiny), "-b", "4", "-q", "-o", tmp_path / "single.h5", tiny["x"])
    assert r.exit_code == 0, r.stderr
    single = read(tmp_path / "single.h5")
    for extra in ([], ["--copy"]):
        merged = tmp_path / f"merged{''.join(extra)}.h5"
        r = cli("merge", *extra, *(tmp_path / f"part-{k}.h5" for k in (1, 2, 0)), "-o", merged)
        assert r.exit_code == 0, r.stderr
        check_every_row(merged, tiny)
        sources, values, _ = read(merged)
        assert sources == single[0]
        for name in LAYERS:  # batches start at each shard's first row: float32 may differ by rounding
            np.testing.assert_allclose(values[name], single[1][name], rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------- files whose rows disagree


@pytest.fixture(scope="module")
def good(tiny, tmp_path_factory):
    """A dump of 12 rows and the same job in 2 shards, from the real CLI."""
    from click.testing import CliRunner

    from tensorprobe.cli import cli

    folder = tmp_path_factory.mktemp("good")
    x = folder / "x12.npy"
    np.save(x, tiny["data"][:12])
    args = ["dump", *map(str, layer_args(tiny, "wide", "head")), "-b", "5", "-q"]
    for name, extra in (("d.h5", []), ("p0.h5", ["--shard", "0/2"]), ("p1.h5", ["--shard", "1/2"])):
        r = CliRunner().invoke(cli, [*args, *extra, "-o", str(folder / name), str(x)])
        assert r.exit_code == 0, r.stderr
    return folder


def doctored(source, target, how):
    shutil.copy(source, target)
    with h5py.File(target, "a") as f:
        how(f)
    return target


def shorten(name, rows):
    def cut(f):
        ds = f[name]
        ds.resize((rows,) + ds.shape[1:])
    return cut


def test_summary_diff_plot_and_merge_refuse_a_dataset_shorter_than_its_sources(cli, good, tmp_path):
    bad = doctored(good / "d.h5", tmp_path / "bad.h5", shorten("activations/wide", 11))
    expected = f"error: '{bad}' is a damaged dump: /activations/wide holds 11 rows, /inputs/source 12"
    for args in (["summary", bad], ["summary", "--json", bad], ["diff", good / "d.h5", bad],
                 ["diff", bad, good / "d.h5"], ["plot", bad, "-l", "wide", "-o", tmp_path / "p.png"]):
        r = cli(*args)
        assert r.exit_code == 1, (args, r.stderr)
        assert error_line(r) == expected and r.stdout == ""
    assert not (tmp_path / "p.png").exists()
    part = doctored(good / "p1.h5", tmp_path / "p1.h5", shorten("activations/head", 5))
    r = cli("merge", good / "p0.h5", part, "-o", tmp_path / "all.h5")
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{part}' is a damaged dump: /activations/head holds 5 rows, /inputs/source 6"
    assert not (tmp_path / "all.h5").exists() and leftovers(tmp_path) == []


def test_sources_or_samples_that_disagree_with_the_datasets_are_refused(cli, good, tmp_path):
    fewer = doctored(good / "d.h5", tmp_path / "fewer.h5", shorten("inputs/source", 10))
    r = cli("summary", fewer)
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{fewer}' is a damaged dump: /activations/head holds 12 rows, /inputs/source 10"
    samples = doctored(good / "d.h5", tmp_path / "samples.h5", lambda f: f.attrs.__setitem__("samples", 13))
    r = cli("diff", good / "d.h5", samples)
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{samples}' is a damaged dump: its attribute samples is 13, /inputs/source holds 12 rows"


def test_merge_refuses_a_shard_that_lost_rows_consistently(cli, good, tmp_path):
    """A shard whose datasets, sources and `samples` all lost the same last row still misses a
    row of its shard_rows: every reader refuses it, merge included."""

    def lose_last_row(f):
        for name in ("inputs/source", "activations/wide", "activations/head"):
            shorten(name, 5)(f)
        f.attrs["samples"] = 5

    part = doctored(good / "p1.h5", tmp_path / "p1.h5", lose_last_row)
    refused = f"error: '{part}' is a damaged dump: it holds 5 rows, not its shard's 6 rows [6, 12) of 12"
    r = cli("summary", part)
    assert r.exit_code == 1 and error_line(r) == refused
    r = cli("merge", part, good / "p0.h5", "-o", tmp_path / "all.h5")
    assert r.exit_code == 1 and error_line(r) == refused
    assert not (tmp_path / "all.h5").exists()


def test_an_incomplete_dump_is_still_read_with_allow_incomplete(cli, good, tmp_path):
    """A dump still being written has rows in /inputs/source its datasets do not have yet."""

    def running(f):
        shorten("activations/wide", 10)(f)
        f.attrs["complete"] = False

    partial = doctored(good / "d.h5", tmp_path / ".d.h5.x.partial", running)
    r = cli("summary", "--allow-incomplete", "--json", partial)
    assert r.exit_code == 0, r.stderr
    rows = {d["path"]: d["samples"] for d in json.loads(r.stdout)["datasets"]}
    assert rows == {"wide": 10, "head": 12}


# ---------------------------------------------------------------- the writer's own check


def test_a_dropped_batch_fails_the_dump_and_keeps_nothing(cli, tiny, monkeypatch, tmp_path):
    """Whatever loses a batch on its way to the writer, the dump is not marked complete: here
    the third computed batch never reaches the queue."""
    from tensorprobe import runner

    put = runner._BackgroundWriter.put
    batches = []

    def dropping(self, batch, arrays):
        batches.append(len(batch.sources))
        if len(batches) != 3:
            put(self, batch, arrays)

    monkeypatch.setattr(runner._BackgroundWriter, "put", dropping)
    out = tmp_path / "d.h5"
    out.write_bytes(b"the user's file")
    for extra in ([], ["--shard", "1/2"]):
        batches.clear()
        r = cli("dump", *layer_args(tiny), "-b", "4", "-q", "--overwrite", *extra, "-o", out, tiny["x"])
        assert r.exit_code == 1
        expected = ROWS if not extra else ROWS - ROWS // 2
        assert error_line(r) == (f"error: --output '{out}': /inputs/source holds {expected - 4} rows, expected "
                                 f"{expected} ({expected} input rows); the dump is not kept")
        assert out.read_bytes() == b"the user's file" and leftovers(tmp_path) == []


def test_rows_skipped_as_bad_count_once_per_row_with_several_inputs(cli, tmp_path_factory, tmp_path):
    """Two image inputs fed from the same folder: a bad image costs one row but is recorded
    for both inputs; the check counts rows, and merge adds up the shards' skipped rows."""
    import keras
    from PIL import Image

    L = keras.layers
    keras.utils.set_random_seed(13)
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    y = L.Concatenate(name="cat")([a, b])
    model = keras.Model([a, b], L.Dense(2, name="out")(L.Flatten(name="flat")(y)), name="pair")
    path = tmp_path_factory.mktemp("pair") / "pair.keras"
    model.save(path)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(14)
    for i in range(6):
        if i in (1, 4):
            (photos / f"p{i}.png").write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    common = ["dump", "-m", path, "-l", "out", "--skip-bad", "-b", "2", "-q", "--input", f"a={photos}",
              "--input", f"b={photos}"]
    r = cli(*common, "-o", tmp_path / "single.h5")
    assert r.exit_code == 0, r.stderr
    for k in range(2):
        r = cli(*common, "--shard", f"{k}/2", "-o", tmp_path / f"p{k}.h5")
        assert r.exit_code == 0, r.stderr
    r = cli("merge", tmp_path / "p0.h5", tmp_path / "p1.h5", "-o", tmp_path / "all.h5")
    assert r.exit_code == 0, r.stderr
    good = [i for i in range(6) if i not in (1, 4)]
    x = np.stack([np.asarray(Image.open(photos / f"p{i}.png").convert("RGB"), dtype="float32") for i in good])
    for name in ("single.h5", "all.h5"):
        with h5py.File(tmp_path / name, "r") as f:
            # one file feeds both inputs: the row's source is that file
            assert list(f["inputs/source"].asstr()[()]) == [str(photos / f"p{i}.png") for i in good]
            assert [row[0] for row in f["inputs/skipped"].asstr()[()]] == \
                [str(photos / f"p{i}.png") for i in (1, 1, 4, 4)]
            assert f["inputs/skipped"].attrs["rows"] == 2
            np.testing.assert_allclose(f["activations/out"][()], np.asarray(model([x, x])), rtol=1e-5, atol=1e-4)
