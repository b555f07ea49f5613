"""`dump --ray` and tensorprobe.ray: the sharded dump on Ray Data workers, merged, equal to a
single dump. One local Ray (two CPUs) serves the whole module."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import ray  # the test extra installs it: a missing Ray fails here, it is not skipped

from conftest import ROOT, error_line

# A layer that kills its worker process the first time it runs while MARKER exists (the
# marker is removed first, so exactly one try of one block dies): a worker that dies, for real.
CUSTOM = '''
import os

import keras
import tensorflow as tf

MARKER = {marker!r}


class DieOnce(keras.layers.Layer):
    def call(self, x):
        def check(v):
            try:
                os.unlink(MARKER)
            except FileNotFoundError:
                return v
            os._exit(3)

        y = tf.py_function(check, [x], x.dtype)
        y.set_shape(x.shape)
        return y

    def compute_output_shape(self, shape):
        return shape
'''


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        from tensorprobe.distributed import local_temp_dir

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=local_temp_dir())
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A small model with a DieOnce layer, its custom-objects file, two input files."""
    import keras

    folder = tmp_path_factory.mktemp("ray")
    custom = folder / "die_once.py"
    custom.write_text(textwrap.dedent(CUSTOM.format(marker=str(folder / "die.marker"))))
    spec = importlib.util.spec_from_file_location("tp_ray_die_once", custom)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((6,), name="x")
    h = L.Dense(5, activation="relu", name="d1")(x)
    h = module.DieOnce(name="die")(h)
    model = keras.Model(x, L.Dense(3, name="d2")(h), name="m")
    model.save(folder / "m.keras")
    rng = np.random.default_rng(8)
    np.save(folder / "a.npy", rng.normal(size=(13, 6)).astype("float32"))
    np.save(folder / "b.npy", rng.normal(size=(11, 6)).astype("float32"))
    return {"folder": folder, "model": folder / "m.keras", "custom": custom, "marker": folder / "die.marker",
            "inputs": [folder / "a.npy", folder / "b.npy"], "keras": model}


@pytest.fixture(scope="module")
def single(job, tmp_path_factory):
    """The dump made on one machine, without Ray."""
    from click.testing import CliRunner

    from tensorprobe.cli import cli as command

    out = tmp_path_factory.mktemp("single") / "single.h5"
    result = CliRunner().invoke(command, ["dump", "-m", str(job["model"]), "--custom-objects", str(job["custom"]), "--unsafe",
                                          "--all", "-b", "4", "-q", *map(str, job["inputs"]), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


def _contents(path):
    """{dataset path: array} of every dataset of a dump, /inputs/source among them."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def _assert_equal_dumps(a, b):
    da, db = _contents(a), _contents(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name].dtype == db[name].dtype and da[name].shape == db[name].shape, name
        assert np.array_equal(da[name], db[name]), name


def test_single_dump_is_keras(job, single):
    """The reference itself, against Keras: the sub-models of the layers, on all rows in order."""
    import keras

    x = np.concatenate([np.load(p) for p in job["inputs"]])
    model = job["keras"]
    with h5py.File(single, "r") as f:
        for name in ("d1", "d2"):
            expected = keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)
            np.testing.assert_allclose(f[f"activations/{name}"][()], expected, rtol=1e-6, atol=1e-6)
        sources = list(f["inputs/source"].asstr()[()])
    assert sources == [f"{job['inputs'][0]}[{i}]" for i in range(13)] + [f"{job['inputs'][1]}[{i}]" for i in range(11)]


def test_ray_dump_equals_single_dump(local_ray, job, single, cli, tmp_path, monkeypatch):
    from tensorprobe.console import err

    monkeypatch.setattr(type(err), "is_terminal", property(lambda self: True))  # progress is for terminals
    out = tmp_path / "acts.h5"
    result = cli("dump", "-m", job["model"], "--custom-objects", job["custom"], "--unsafe", "--all", "-b", "4", *job["inputs"],
                 "-o", out, "--ray", "local", "--workers", "2", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["samples"] == 24
    shown = [line for line in result.stderr.splitlines() if line.startswith("ray: ")]
    assert shown == [f"ray: {k}/6 blocks, {4 * k}/24 rows" for k in range(1, 7)]
    parts = sorted(p.name for p in (tmp_path / "acts.h5.parts").iterdir())
    # 24 rows, batches of 4: 6 batches, so 6 blocks (at most 4 a worker), each of whole batches
    assert parts == [f"part-{k:05d}-of-00006.h5" for k in range(6)]
    with h5py.File(tmp_path / "acts.h5.parts" / parts[1], "r") as f:
        assert f.attrs["shard"] == "1/6" and list(f.attrs["shard_rows"]) == [4, 8]
    with h5py.File(out, "r") as f:
        assert f["activations/d1"].is_virtual
        assert f.attrs["complete"]
    _assert_equal_dumps(single, out)
    assert cli("diff", single, out).exit_code == 0


def test_api_copy_blocks_and_progress(local_ray, job, single, tmp_path):
    import tensorprobe.ray

    seen = []
    out = tmp_path / "copied.h5"
    summary = tensorprobe.ray.dump(job["model"], [str(p) for p in job["inputs"]], out, all_layers=True,
                                   batch_size=4, custom_objects=[job["custom"]], unsafe=True, workers=2, blocks=3, copy=True,
                                   progress=lambda *a: seen.append(a))
    assert summary["samples"] == 24
    assert not (tmp_path / "copied.h5.parts").exists()  # copied, then removed
    with h5py.File(out, "r") as f:
        assert not f["activations/d1"].is_virtual
    _assert_equal_dumps(single, out)  # blocks of 8 rows: whole batches of 4
    assert [a[:2] for a in seen] == [(1, 3), (2, 3), (3, 3)]
    assert sorted(a[2] for a in seen) == [8, 16, 24] and {a[3] for a in seen} == {24}


def test_a_worker_that_dies_is_retried(local_ray, job, single, cli, tmp_path):
    job["marker"].touch()
    out = tmp_path / "retried.h5"
    try:
        result = cli("dump", "-m", job["model"], "--custom-objects", job["custom"], "--unsafe", "--all", "-b", "4",
                     *job["inputs"], "-o", out, "--ray", "local", "--workers", "2", "-q")
        assert not job["marker"].exists()  # a worker died on it
    finally:
        job["marker"].unlink(missing_ok=True)
    assert result.exit_code == 0, result.stderr
    _assert_equal_dumps(single, out)


def test_model_that_cannot_be_loaded(local_ray, job, cli, tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not a zip archive")
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", broken, "--all", *job["inputs"], "-o", out, "--ray", "local")
    assert result.exit_code == 1
    assert error_line(result) == f"error: {broken}: damaged or incomplete model file (File is not a zip file)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.keras"]  # no output, no parts folder


def test_usage_errors(job, cli, tmp_path):
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", job["model"], "--all", *job["inputs"], "-o", out, "--workers", "2")
    assert result.exit_code == 2 and "--workers needs --ray" in error_line(result)
    result = cli("dump", "-m", job["model"], "--all", *job["inputs"], "-o", out, "--ray", "local", "--shard", "0/2")
    assert result.exit_code == 2 and "--shard cannot be combined with --ray" in error_line(result)
    result = cli("dump", "-m", job["model"], "--all", "-", "-o", out, "--ray", "local")
    assert result.exit_code == 2
    assert error_line(result) == "error: --ray: standard input (-) cannot be read by Ray workers; give files"
    assert list(tmp_path.iterdir()) == []


def test_without_ray_installed(job, tmp_path):
    out = tmp_path / "out.h5"
    code = ("import sys; sys.modules['ray'] = None; from tensorprobe.cli import main; "
            f"sys.argv = ['tensorprobe', *{[ 'dump', '-m', str(job['model']), '--all', str(job['inputs'][0]), '-o', str(out), '--ray', 'local']!r}]; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert p.stderr.splitlines() == ["error: --ray needs Ray Data, which is not installed: pip install 'tensorprobe[ray]'"]
    assert list(tmp_path.iterdir()) == []
    code = ("import sys; sys.modules['ray'] = None; import tensorprobe.ray\n"
            f"try:\n    tensorprobe.ray.dump({str(job['model'])!r}, [{str(job['inputs'][0])!r}], {str(out)!r}, all_layers=True)\n"
            "except tensorprobe.TensorprobeError as e:\n    print(e)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout == "ray needs Ray Data, which is not installed: pip install 'tensorprobe[ray]'\n", p.stderr


def test_extractor_in_a_pipeline_of_ones_own_then_resume(local_ray, job, single, cli, tmp_path):
    """The documented pipeline: Extractor in map_batches, its parts merged by `tensorprobe merge`;
    then tensorprobe.ray.dump with `resume` keeps those parts as they are (the same 6 blocks)."""
    import ray.data

    import tensorprobe.ray

    folder = tmp_path / "acts.h5.parts"
    ds = ray.data.from_items([{"block": k} for k in range(6)])
    done = ds.map_batches(tensorprobe.ray.Extractor, batch_size=1,
                          fn_constructor_kwargs={"model": str(job["model"]), "x": [str(p) for p in job["inputs"]],
                                                 "folder": str(folder), "blocks": 6, "all_layers": True,
                                                 "batch_size": 4, "custom_objects": [str(job["custom"])],
                                                 "unsafe": True},
                          compute=ray.data.ActorPoolStrategy(size=2))
    rows = sorted((int(r["block"]), r["path"], int(r["rows"])) for r in done.iter_rows())
    assert [(k, rows_) for k, _, rows_ in rows] == [(k, 4) for k in range(6)]
    merged = tmp_path / "merged.h5"
    result = cli("merge", *[path for _, path, _ in rows], "-o", merged)
    assert result.exit_code == 0, result.stderr
    _assert_equal_dumps(single, merged)

    times = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    out = tmp_path / "acts.h5"
    tensorprobe.ray.dump(job["model"], [str(p) for p in job["inputs"]], out, all_layers=True, batch_size=4,
                         custom_objects=[job["custom"]], unsafe=True, workers=2, blocks=6, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == times  # kept, not written again
    _assert_equal_dumps(single, out)


def test_ctrl_c_stops_the_job_and_leaves_nothing(local_ray, job, tmp_path):
    """Ctrl-C in the driver while blocks run (here: raised by the progress callback after the
    first block, where SIGINT lands): no output, no parts folder, no worker left running."""
    import tensorprobe.ray

    def interrupt(done, blocks, rows_done, rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tensorprobe.ray.dump(job["model"], [str(p) for p in job["inputs"]], tmp_path / "acts.h5", all_layers=True,
                             batch_size=4, custom_objects=[job["custom"]], unsafe=True, workers=2, blocks=6,
                             progress=interrupt)
    assert list(tmp_path.iterdir()) == []
    deadline = time.monotonic() + 30  # the actors are killed asynchronously: their CPUs come back
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


@pytest.mark.parametrize("rows, batch, workers, expected", [
    (24, 4, 2, 6),      # 6 batches: one block each, at most 4 a worker
    (128, 32, 2, 4),    # boundaries 32, 64, 96: whole batches
    (1000, 10, 2, 5),   # 8, 7 and 6 blocks would cut batches; 5 (200 rows each) does not
    (100, 32, 2, 4),    # no count from 4 to 2 falls on batches: 4, values as --shard gives them
    (0, 32, 3, 1),      # no rows: one empty block
])
def test_block_count(rows, batch, workers, expected):
    from tensorprobe.distributed import block_count

    n = block_count(rows, batch, workers)
    assert n == expected
    assert block_count(rows, batch, workers, blocks=7) == 7

