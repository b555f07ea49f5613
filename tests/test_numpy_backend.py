"""The pipeline through a backend that is not TensorFlow's: tests/numpy_backend.py, two dense
layers in NumPy, registered in backends/detect.py's REGISTRY like a real format. It proves the
Backend interface (a format is a registry line plus a Backend) and runs dump, compare,
--shard/merge and --resume in milliseconds. Every value is computed again here, in NumPy,
from the weights the test wrote."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import numpy_backend
from conftest import error_line

TESTS = Path(__file__).resolve().parent
ROWS = 9


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The fake format in the registry: one line, after the others (the Keras entry takes only
    the zip archives that list a config.json)."""
    from tensorprobe.backends import detect

    monkeypatch.setattr(detect, "REGISTRY", [*detect.REGISTRY, "numpy_backend"])


def weights(seed, dtype="float32", features=6, hidden=5, units=3):
    rng = np.random.default_rng(seed)
    return {"w1": rng.normal(size=(features, hidden)).astype(dtype), "b1": rng.normal(size=hidden).astype(dtype),
            "w2": rng.normal(size=(hidden, units)).astype(dtype), "b2": rng.normal(size=units).astype(dtype)}


def forward(w, x):
    """{layer path: value}, computed here: x flattened, times w1 plus b1, ReLU, times w2 plus b2."""
    dense1 = x.reshape(len(x), -1) @ w["w1"] + w["b1"]
    relu = np.maximum(dense1, 0)
    return {"dense1": dense1, "relu": relu, "dense2": relu @ w["w2"] + w["b2"]}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """name -> path of the fake models and their inputs; `weights` -> name -> the weights."""
    folder = tmp_path_factory.mktemp("fake")
    made = {"a": weights(1)}
    made["copy"] = {k: v.copy() for k, v in made["a"].items()}
    made["w2"] = {**made["a"], "w2": made["a"]["w2"] + np.float32(0.5) * (np.arange(15).reshape(5, 3) == 7)}
    made["w1"] = {**made["a"], "w1": made["a"]["w1"] + np.float32(1.0)}
    made["half"] = {k: v.astype("float16") for k, v in made["a"].items()}
    made["image"] = weights(2, features=4 * 4 * 3)
    paths = {}
    for name, w in made.items():
        paths[name] = folder / f"{name}.npz"
        numpy_backend.save(paths[name], **w, input_shape=(4, 4, 3) if name == "image" else None)
    rng = np.random.default_rng(3)
    paths["x"] = folder / "x.npy"
    np.save(paths["x"], rng.normal(size=(ROWS, 6)).astype("float32"))
    return {"paths": paths, "weights": made, "folder": folder}


def x_of(fake):
    return np.load(fake["paths"]["x"])


def read(path, group="activations"):
    with h5py.File(path, "r") as f:
        return {name: f[group][name][:] for name in f[group]}, dict(f.attrs), list(f["inputs/source"].asstr()[:])


# ---- the registry and the layers -------------------------------------------------------------

def test_registry_opens_the_fake_by_content_and_layers_lists_it(cli, fake, tmp_path):
    from tensorprobe.backends import detect

    import tensorprobe

    renamed = tmp_path / "model.bin"  # recognised by the first zip member, not by the name
    renamed.write_bytes(fake["paths"]["a"].read_bytes())
    assert detect.detect_format(renamed) == "numpy_dense"
    w = fake["weights"]["a"]
    result = cli("layers", renamed, "--json")
    assert result.exit_code == 0, result.stderr
    layers = json.loads(result.stdout)
    assert [(l["index"], l["path"], l["class"], l["output_shape"], l["params"]) for l in layers] == [
        ("0", "x", "InputLayer", [None, 6], 0),
        ("1", "dense1", "Dense", [None, 5], w["w1"].size + w["b1"].size),
        ("2", "relu", "ReLU", [None, 5], 0),
        ("3", "dense2", "Dense", [None, 3], w["w2"].size + w["b2"].size),
    ]
    assert tensorprobe.load(renamed).layers() == layers
    model = tensorprobe.load(renamed)
    assert (model.format, model.inputs) == ("numpy_dense", [{"name": "x", "shape": [None, 6], "dtype": "float32"}])
    table = cli("layers", renamed)
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[0] == f"{renamed}: numpy_dense (numpy {np.__version__})"
    total = sum(v.size for v in w.values())
    assert f"params:  {total} total, 0 trainable, {total} non-trainable" in table.stdout.splitlines()


def test_other_zip_archives_are_not_taken_for_keras_files(cli, fake, tmp_path):
    inputs = tmp_path / "inputs.npz"  # an input archive given as the model: no config.json in it
    np.savez(inputs, x=x_of(fake))
    result = cli("layers", inputs)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: {inputs}: not a model file tensorprobe reads (a .keras zip archive, ")
    assert line.endswith(", or a tensorprobe NumPy test model (.npz))")
    damaged = tmp_path / "damaged.keras"  # a zip's first header, then no archive: a damaged Keras file
    damaged.write_bytes(fake["paths"]["a"].read_bytes()[:40])
    result = cli("layers", damaged)
    assert result.exit_code == 1
    assert error_line(result) == f"error: {damaged}: damaged or incomplete model file (File is not a zip file)"


def test_tensors_lists_the_fake_graph(cli, fake):
    result = cli("tensors", fake["paths"]["a"], "--op", "biasadd", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"name": "dense1/BiasAdd:0", "op": "BiasAdd", "dtype": "float32", "shape": [None, 5]},
        {"name": "dense2/BiasAdd:0", "op": "BiasAdd", "dtype": "float32", "shape": [None, 3]},
    ]
    table = cli("tensors", fake["paths"]["a"])
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[-3:] == ["inputs:  x (None, 6) float32 -> x:0",
                                              "outputs: dense2 <- dense2/BiasAdd:0", "tensors: 10 of 10 shown"]


# ---- dump ------------------------------------------------------------------------------------

def test_dump_layers_by_name_and_index(cli, fake, tmp_path):
    out = tmp_path / "two.h5"
    result = cli("dump", "-m", fake["paths"]["a"], "--layer", "dense1", "--layer", "3", "-b", "4",
                 fake["paths"]["x"], "-o", out, "-q")
    assert (result.exit_code, result.stderr) == (0, "")
    values, attrs, sources = read(out)
    expected = forward(fake["weights"]["a"], x_of(fake))
    assert sorted(values) == ["dense1", "dense2"]
    for name in values:
        np.testing.assert_allclose(values[name], expected[name], rtol=1e-6, atol=1e-6)
    assert sources == [f"{fake['paths']['x']}[{i}]" for i in range(ROWS)]
    assert (attrs["model_format"], attrs["loader"], attrs["numpy_version"]) == (
        "numpy_dense", f"numpy {np.__version__}", np.__version__)
    assert "tensorflow_version" not in attrs and "keras_version" not in attrs


def test_dump_all_and_tensors(cli, fake, tmp_path):
    out = tmp_path / "all.h5"
    result = cli("dump", "-m", fake["paths"]["a"], "--all", "--tensor", "dense2/MatMul", fake["paths"]["x"],
                 "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [d["name"] for d in summary["datasets"]] == ["dense1", "relu", "dense2", "tensors/dense2/MatMul:0"]
    values, _, _ = read(out)
    expected = forward(fake["weights"]["a"], x_of(fake))
    assert sorted(values) == sorted(expected)  # the InputLayer is not among --all's layers
    for name in expected:
        np.testing.assert_allclose(values[name], expected[name], rtol=1e-6, atol=1e-6)
    with h5py.File(out, "r") as f:
        matmul = f["tensors/dense2/MatMul:0"]
        np.testing.assert_allclose(matmul[:], expected["relu"] @ fake["weights"]["a"]["w2"], rtol=1e-6, atol=1e-6)
        assert (matmul.attrs["layer"], matmul.attrs["op_type"]) == ("dense2", "MatMul")


def test_activations_api(fake):
    import tensorprobe

    x = x_of(fake)
    acts = tensorprobe.activations(str(fake["paths"]["a"]), x, all_layers=True, batch_size=2)
    expected = forward(fake["weights"]["a"], x)
    assert sorted(acts) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(acts[name], expected[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (("--layer", "dense1", "--dtype", "float16"),
     "--dtype applies to the layers of a Keras model; {model} holds only a NumPy test model, stored as computed"),
    (("--layer", "dense1", "--gradients"), "--gradients needs a Keras model; {model} holds only a NumPy test model"),
    (("--tensor", "dense1/kernel:0"),
     "--tensor 'dense1/kernel:0': does not depend on the inputs (a constant), so it has no batch axis"),
    (("--layer", "dense3"), "--layer 'dense3': no such layer; did you mean 'dense1' or 'dense2'? "
                            "(`tensorprobe layers MODEL` lists them)"),
])
def test_dump_refuses_what_the_fake_cannot_do(cli, fake, tmp_path, args, message):
    model = fake["paths"]["a"]
    result = cli("dump", "-m", model, *args, fake["paths"]["x"], "-o", tmp_path / "no.h5")
    assert result.exit_code == 2
    assert error_line(result) == "error: " + message.format(model=model)
    assert not (tmp_path / "no.h5").exists()


# ---- --shard, merge, --resume ----------------------------------------------------------------

def test_shards_merged_equal_one_dump(cli, fake, tmp_path):
    model, x = fake["paths"]["a"], fake["paths"]["x"]
    whole = tmp_path / "whole.h5"
    assert cli("dump", "-m", model, "--all", x, "-o", whole, "-q").exit_code == 0
    parts = []
    for k in (1, 0):  # any order
        parts.append(tmp_path / f"part-{k}.h5")
        result = cli("dump", "-m", model, "--all", "--shard", f"{k}/2", "-b", "3", x, "-o", parts[-1], "-q")
        assert (result.exit_code, result.stderr) == (0, "")
    first, _, sources = read(parts[1])
    assert sources == [f"{x}[{i}]" for i in range(ROWS // 2)]  # rows [0, 4) of 9
    assert len(first["dense2"]) == ROWS // 2
    merged = tmp_path / "merged.h5"
    result = cli("merge", *parts, "-o", merged)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == f"wrote {merged}: {ROWS} rows from 2 shards (virtual)"
    same = cli("diff", merged, whole, "--rtol", "0", "--atol", "0", "--json")
    assert same.exit_code == 0, same.stdout
    assert json.loads(same.stdout)["match"] is True
    values, _, _ = read(merged)
    expected = forward(fake["weights"]["a"], x_of(fake))
    for name in expected:
        np.testing.assert_allclose(values[name], expected[name], rtol=1e-6, atol=1e-6)


def test_resume_skips_a_complete_output_and_refuses_another_jobs(cli, fake, tmp_path):
    model, x = fake["paths"]["a"], fake["paths"]["x"]
    out = tmp_path / "part-0.h5"
    args = ("dump", "-m", model, "--all", "--shard", "0/2", x, "-o", out, "--resume")
    assert cli(*args).exit_code == 0
    before = out.stat()
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert again.stderr.strip() == f"skipped: '{out}' is already this shard's complete output (--resume)"
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # another model file (one weight changed) is another job: its hash is in the options' fingerprint
    other = cli("dump", "-m", fake["paths"]["w2"], *args[3:])
    assert other.exit_code == 2
    assert error_line(other) == (f"error: --output '{out}' exists and is not this shard's complete output (other "
                                 "inputs, input contents, options or shard); pass --overwrite to replace it")
    redone = cli("dump", "-m", fake["paths"]["w2"], *args[3:], "--overwrite", "-q")
    assert redone.exit_code == 0, redone.stderr
    values, _, _ = read(out)
    np.testing.assert_allclose(values["dense2"], forward(fake["weights"]["w2"], x_of(fake)[:4])["dense2"],
                               rtol=1e-6, atol=1e-6)


# ---- compare ---------------------------------------------------------------------------------

def test_compare_two_identical_models(cli, fake, tmp_path):
    node_data = tmp_path / "nodes.json"
    result = cli("compare", fake["paths"]["a"], fake["paths"]["copy"], fake["paths"]["x"], "--json",
                 "--node-data", node_data)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["first_divergence"], report["match"], report["samples"]) == (None, True, ROWS)
    assert report["precision"] == {"a": "float32", "b": "float32"} and report["metric"] == "scaled:0.0001"
    assert [(p["path"], p["status"], p["max_abs"], p["node_b"]) for p in report["pairs"]] == [
        ("dense1", "ok", 0.0, "dense1/BiasAdd:0"), ("relu", "ok", 0.0, "relu/Relu:0"),
        ("dense2", "ok", 0.0, "dense2/BiasAdd:0")]
    assert (report["only_in_a"], report["only_in_b"]) == ([], [])
    assert json.loads(node_data.read_text())["results"] == {  # model B's nodes: backend.node_keys
        "dense1/BiasAdd:0": {"value": 0.0}, "relu/Relu:0": {"value": 0.0}, "dense2/BiasAdd:0": {"value": 0.0}}


@pytest.mark.parametrize("changed, first", [("w2", "dense2"), ("w1", "dense1")])
def test_compare_names_the_layer_where_a_changed_weight_parts_them(cli, fake, changed, first):
    result = cli("compare", fake["paths"]["a"], fake["paths"][changed], fake["paths"]["x"], "--json", "-b", "4")
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    x = x_of(fake)
    a, b = forward(fake["weights"]["a"], x), forward(fake["weights"][changed], x)
    expected = []
    for name in ("dense1", "relu", "dense2"):
        error = float(np.abs(a[name] - b[name]).max())
        expected.append((name, "ok" if error <= 1e-4 * float(np.abs(b[name]).max()) else "differ", error))
    assert [(p["path"], p["status"]) for p in report["pairs"]] == [(n, s) for n, s, _ in expected]
    for pair, (_, _, error) in zip(report["pairs"], expected):
        assert pair["max_abs"] == pytest.approx(error, rel=1e-5, abs=1e-6)
    assert report["first_divergence"] == first == next(n for n, s, _ in expected if s == "differ")


def test_compare_api_against_half_precision_takes_the_snr_default(fake):
    import tensorprobe

    x = x_of(fake)
    report = tensorprobe.compare(str(fake["paths"]["a"]), str(fake["paths"]["half"]), x)
    assert report["precision"] == {"a": "float32", "b": "float16"}
    assert report["criterion"] == "snr:20 (SNR >= X dB; the default for A float32, B float16)"
    b = forward(fake["weights"]["half"], x.astype("float16"))
    a = forward(fake["weights"]["a"], x)
    for pair in report["pairs"]:
        ref, err = b[pair["path"]].astype("float64"), a[pair["path"]] - b[pair["path"]].astype("float64")
        assert pair["snr_db"] == pytest.approx(10 * np.log10((ref ** 2).sum() / (err ** 2).sum()), rel=1e-6)
    assert report["first_divergence"] is None  # float16 rounding is far above 20 dB


def test_compare_skip_bad_passes_over_a_bad_image_and_saves_the_kept_rows(cli, fake, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    pixels = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
    names = ["0.png", "1.png", "3.png"]
    for name, image in zip(names, pixels):
        Image.fromarray(image).save(folder / name)
    bad = folder / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 8)
    model = fake["paths"]["image"]
    refused = cli("compare", model, model, folder)
    assert refused.exit_code == 1
    save_a = tmp_path / "a.h5"
    result = cli("compare", model, model, folder, "--skip-bad", "--save-a", save_a, "--json", "-b", "2")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["samples"], report["first_divergence"]) == (3, None)
    [skipped] = report["skipped"]
    assert skipped["path"] == str(bad) and skipped["reason"].startswith("not a readable image (")
    assert error_line(refused) == f"error: {bad}: {skipped['reason']}"
    values, attrs, sources = read(save_a)
    assert sources == [str(folder / name) for name in names]  # the kept rows, in order
    expected = forward(fake["weights"]["image"], np.stack(pixels).astype("float32"))
    for name in expected:
        np.testing.assert_allclose(values[name], expected[name], rtol=1e-6, atol=1e-5)
    with h5py.File(save_a, "r") as f:
        assert f["inputs/skipped"].asstr()[:].tolist() == [[str(bad), skipped["reason"]]]
    assert attrs["model_format"] == "numpy_dense"


# ---- no TensorFlow ---------------------------------------------------------------------------

NO_TENSORFLOW = """
import json, sys
import numpy as np
import numpy_backend
from click.testing import CliRunner
import tensorprobe
from tensorprobe import merge
from tensorprobe.backends import detect
from tensorprobe.cli import cli

detect.REGISTRY.append("numpy_backend")
rng = np.random.default_rng(0)
w = {"w1": rng.normal(size=(4, 3)), "b1": rng.normal(size=3), "w2": rng.normal(size=(3, 2)), "b2": rng.normal(size=2)}
w = {k: v.astype("float32") for k, v in w.items()}
numpy_backend.save("m.npz", **w)
x = rng.normal(size=(5, 4)).astype("float32")
np.save("x.npy", x)
layers = [l["path"] for l in tensorprobe.load("m.npz").layers()]
acts = tensorprobe.activations("m.npz", x, layers=["dense2"])
for k in (0, 1):
    tensorprobe.dump("m.npz", "x.npy", f"p{k}.h5", all_layers=True, shard=f"{k}/2")
merge.merge(["p0.h5", "p1.h5"], "merged.h5")
tensorprobe.dump("m.npz", "x.npy", "whole.h5", all_layers=True)
resumed = CliRunner().invoke(cli, ["dump", "-m", "m.npz", "--all", "x.npy", "-o", "whole.h5", "--resume"])
compared = tensorprobe.compare("m.npz", "m.npz", "x.npy")
print(json.dumps({
    "layers": layers, "dense2": acts["dense2"].tolist(), "diff": tensorprobe.diff("merged.h5", "whole.h5")["match"],
    "resumed": [resumed.exit_code, resumed.stderr.strip()], "first_divergence": compared["first_divergence"],
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")),
}))
"""


def test_the_pipeline_runs_without_tensorflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    done = subprocess.run([sys.executable, "-c", NO_TENSORFLOW], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert result["layers"] == ["x", "dense1", "relu", "dense2"]
    assert (result["diff"], result["first_divergence"]) == (True, None)
    assert result["resumed"] == [0, "skipped: 'whole.h5' is already this dump's complete output (--resume)"]
    with np.load(tmp_path / "m.npz") as archive:
        w = {name: archive[name] for name in numpy_backend.WEIGHTS}
    expected = forward(w, np.load(tmp_path / "x.npy"))["dense2"]
    np.testing.assert_allclose(result["dense2"], expected, rtol=1e-6, atol=1e-6)
