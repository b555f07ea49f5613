"""Storage options (--dtype, --reduce, --compression, --jit), room checks and failed writes."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import error_line

BIN = Path(sys.executable).parent / "tensorprobe"


def dump(cli, zoo, out, *options, layers=("block1_conv2", "block3_conv1", "fc1")):
    args = ["dump", "-m", zoo["transfer.keras"], "-b", "3", "-o", out, *options]
    for layer in layers:
        args += ["-l", layer]
    r = cli(*args, zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    return h5py.File(out, "r")


@pytest.fixture(scope="module")
def reference(zoo, tmp_path_factory):
    """A plain float32 dump, made once, to compare the storage options against."""
    from click.testing import CliRunner

    from tensorprobe.cli import cli

    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = CliRunner().invoke(cli, ["dump", "-m", str(zoo["transfer.keras"]), "-b", "3", "-l", "block1_conv2", "-l",
                                 "block3_conv1", "-l", "fc1", "-o", str(out), str(zoo["images7.npy"])])
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        return {n: f["activations"][n][()] for n in ("vgg16/block1_conv2", "vgg16/block3_conv1", "fc1")}


def test_float16_storage(cli, zoo, tmp_path, reference):
    with dump(cli, zoo, tmp_path / "a.h5", "--dtype", "float16") as f:
        for name, ref in reference.items():
            ds = f["activations"][name]
            assert ds.dtype == np.float16
            np.testing.assert_array_equal(ds[()], ref.astype(np.float16))
            assert ds.attrs["max"] == pytest.approx(float(ref.astype(np.float16).max()))
        assert f.attrs["dtype"] == "float16"


@pytest.mark.parametrize("how", ["mean", "max"])
def test_reduce_pools_the_spatial_axes(cli, zoo, tmp_path, reference, how):
    with dump(cli, zoo, tmp_path / "a.h5", "--reduce", how) as f:
        pool = np.mean if how == "mean" else np.max
        for name in ("vgg16/block1_conv2", "vgg16/block3_conv1"):
            np.testing.assert_allclose(f["activations"][name][()], pool(reference[name], axis=(1, 2)),
                                       rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f["activations/fc1"][()], reference["fc1"], rtol=1e-5, atol=1e-6)  # nothing to pool
        assert f.attrs["reduce"] == how


@pytest.mark.parametrize("option,name,opts", [("gzip:7", "gzip", 7), ("gzip", "gzip", 4), ("lzf", "lzf", None)])
def test_compression(cli, zoo, tmp_path, reference, option, name, opts):
    with dump(cli, zoo, tmp_path / "a.h5", "--compression", option) as f:
        ds = f["activations/vgg16/block1_conv2"]
        assert ds.compression == name and ds.compression_opts == opts
        np.testing.assert_array_equal(ds[()], reference["vgg16/block1_conv2"])


def test_jit_gives_the_same_values(cli, zoo, tmp_path, reference):
    with dump(cli, zoo, tmp_path / "a.h5", "--jit") as f:
        for name, ref in reference.items():
            np.testing.assert_allclose(f["activations"][name][()], ref, rtol=1e-4, atol=1e-4)


def test_one_compiled_graph_for_every_batch_size(zoo):
    import keras

    from tensorprobe import probe
    from tensorprobe.backends.keras import runner
    from tensorprobe.backends.keras.graph import unroll

    model = keras.saving.load_model(zoo["transfer.keras"], compile=False)
    graph = unroll(model, keras)
    plan = probe.plan(graph, probe.select(graph, ["fc1"]))
    run = runner.extraction_function(graph, plan)
    x = np.load(zoo["images7.npy"])
    for size in (3, 3, 1, 2):
        assert run([x[:size]])[0].shape == (size, 12)
    assert run.compiled.last.experimental_get_tracing_count() == 1


def test_bad_storage_options(cli, zoo, tmp_path):
    base = ["dump", "-m", zoo["transfer.keras"], "-l", "fc1", "-o", tmp_path / "a.h5"]
    for option, value in [("--compression", "zip"), ("--compression", "gzip:12"), ("--dtype", "int8"),
                          ("--reduce", "sum"), ("--max-bytes", "lots")]:
        r = cli(*base, option, value, zoo["input.npy"])
        assert r.exit_code == 2 and option in error_line(r), (option, r.stderr)
    r = cli(*base, "--max-bytes", "100", zoo["input.npy"])
    assert r.exit_code == 2 and "--max-bytes" in error_line(r)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_leaves_nothing_and_says_why(zoo, tmp_path):
    """The file-size limit (ulimit -f) makes HDF5's writes fail part-way, as a full disk does."""
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep me")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    r = subprocess.run([BIN, "dump", "-m", str(zoo["transfer.keras"]), "--all", "--overwrite", "-o", str(out),
                        str(zoo["images7.npy"])], preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --output '{out}': write failed: File too large"]
    assert "Traceback" not in r.stderr
    assert out.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]


def test_no_room_is_refused_before_any_work(cli, zoo, tmp_path, monkeypatch):
    import shutil

    from tensorprobe import store

    real = shutil.disk_usage
    monkeypatch.setattr(store.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1 << 20))  # the filesystem reports 1 MiB free
    r = cli("dump", "-m", zoo["transfer.keras"], "--all", "-o", tmp_path / "a.h5", zoo["images7.npy"])
    assert r.exit_code == 1
    assert "only 1.0 MiB are free" in error_line(r)
    assert list(tmp_path.iterdir()) == []
