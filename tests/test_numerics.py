"""Numerics: Fletcher-32 checksums on every dump dataset (a flipped byte is one error line),
`nanhunt` (the first layer going NaN or Inf, forward and backward) and `validate` (a dump
replayed against its model). Models are tiny and built once per module."""

import json
import os

import h5py
import numpy as np
import pytest

from conftest import error_line

import tensorprobe
from tensorprobe import store
from tensorprobe.errors import DumpReadError


# ---- models and dumps, once per module -----------------------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A small healthy model, its inputs, a dump of every layer and 3 shards of the same."""
    import keras

    folder = tmp_path_factory.mktemp("numerics_plain")
    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((6,), name="x")
    h = L.Dense(5, activation="relu", name="d1")(x)
    out = L.Dense(3, name="d2")(h)
    model = keras.Model(x, out, name="plain")
    model.save(folder / "plain.keras")
    data = np.random.default_rng(0).normal(size=(9, 6)).astype("float32")
    np.save(folder / "x.npy", data)
    tensorprobe.dump(folder / "plain.keras", folder / "x.npy", folder / "all.h5", all_layers=True, batch_size=4)
    for k in range(3):
        tensorprobe.dump(folder / "plain.keras", folder / "x.npy", folder / f"part-{k}.h5", all_layers=True,
                         shard=f"{k}/3")
    return {"folder": folder, "model": folder / "plain.keras", "x": folder / "x.npy", "dump": folder / "all.h5",
            "parts": [folder / f"part-{k}.h5" for k in range(3)], "data": data}


def flip_chunk_byte(path, dataset, keep_times=False):
    """Flip one byte inside the first chunk of `dataset` in the file `path` (its offset from
    HDF5's own chunk index), as a bad disk or copy would."""
    info = os.stat(path)
    with h5py.File(path, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        byte = f.read(1)
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    if keep_times:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def corrupted_copy(src, dst, dataset, keep_times=False):
    dst.write_bytes(src.read_bytes())
    os.utime(dst, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns))
    flip_chunk_byte(dst, dataset, keep_times)
    return dst


CHECKSUM_WORDS = ("fails its Fletcher-32 checksum: a chunk changed after it was written (a damaged disk or "
                  "copy); its values cannot be trusted")


# ---- checksums ------------------------------------------------------------------------------

def test_every_numeric_dataset_of_a_dump_carries_a_checksum(plain):
    with h5py.File(plain["dump"], "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
        numeric = [ds for ds in found if not store.is_string(ds.dtype)]
        assert sorted(ds.name for ds in numeric) == ["/activations/d1", "/activations/d2"]
        assert all(ds.fletcher32 and ds.chunks for ds in numeric)
        # HDF5 allows no filter on variable-length strings: /inputs/source has none
        assert not f["inputs/source"].fletcher32


def test_a_flipped_byte_is_one_error_naming_file_and_dataset(plain, cli, tmp_path):
    bad = corrupted_copy(plain["dump"], tmp_path / "bad.h5", "activations/d1")
    expected = f"error: '{bad}': dataset /activations/d1 {CHECKSUM_WORDS}"
    r = cli("diff", bad, plain["dump"])
    assert r.exit_code == 1 and error_line(r) == expected
    r = cli("plot", bad, "--layer", "d1", "--hist", "-o", tmp_path / "h.png")
    assert r.exit_code == 1 and error_line(r) == expected
    assert not (tmp_path / "h.png").exists()
    with tensorprobe.open_dump(bad) as dump:
        np.testing.assert_array_equal(dump["d2"][:], h5py.File(plain["dump"], "r")["activations/d2"][:])
        with pytest.raises(DumpReadError) as e:
            dump["d1"][:]
        assert str(e.value) == expected[len("error: "):]
        with pytest.raises(DumpReadError):
            np.asarray(dump["d1"])


def test_merge_refuses_a_shard_whose_chunk_fails_its_checksum(plain, cli, tmp_path):
    parts = [tmp_path / p.name for p in plain["parts"]]
    for src, dst in zip(plain["parts"], parts):
        dst.write_bytes(src.read_bytes())
    flip_chunk_byte(parts[1], "activations/d2")
    r = cli("merge", "--copy", *parts, "-o", tmp_path / "all.h5")
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{parts[1]}': dataset /activations/d2 {CHECKSUM_WORDS}"
    assert not (tmp_path / "all.h5").exists()


def test_merge_copy_keeps_checksums_and_a_virtual_merge_names_the_damaged_shard(plain, cli, tmp_path):
    parts = [tmp_path / p.name for p in plain["parts"]]
    for src, dst in zip(plain["parts"], parts):
        dst.write_bytes(src.read_bytes())
    r = cli("merge", "--copy", *parts, "-o", tmp_path / "copied.h5")
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "copied.h5", "r") as f:
        assert all(f[f"activations/{n}"].fletcher32 for n in ("d1", "d2"))
    r = cli("merge", *parts, "-o", tmp_path / "virtual.h5")
    assert r.exit_code == 0, r.stderr
    # the shard's times kept: the merged dump's shard check takes it for unchanged (size and
    # mtime), and the damage surfaces when the virtual dataset reads that chunk
    flip_chunk_byte(parts[2], "activations/d1", keep_times=True)
    r = cli("diff", tmp_path / "virtual.h5", tmp_path / "copied.h5")
    assert r.exit_code == 1
    assert error_line(r) == (f"error: '{tmp_path / 'virtual.h5'}': dataset /activations/d1 reads shard "
                             f"'part-2.h5', whose dataset /activations/d1 {CHECKSUM_WORDS}")
    # changed times: the shard's digest is computed again, and its reading names the shard
    os.utime(parts[2])
    r = cli("diff", tmp_path / "virtual.h5", tmp_path / "copied.h5")
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{parts[2]}': dataset /activations/d1 {CHECKSUM_WORDS}"


def test_a_dump_written_without_checksums_still_reads(plain, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHECKSUM", False)
    old = tmp_path / "old.h5"
    tensorprobe.dump(plain["model"], plain["x"], old, all_layers=True)
    monkeypatch.undo()
    with h5py.File(old, "r") as f:
        assert not f["activations/d1"].fletcher32
    r = cli("diff", old, plain["dump"], "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["match"] is True
    with tensorprobe.open_dump(old) as dump:
        np.testing.assert_array_equal(dump["d1"][:], h5py.File(plain["dump"], "r")["activations/d1"][:])


# ---- nanhunt --------------------------------------------------------------------------------

def _root_class():
    import keras

    @keras.saving.register_keras_serializable(package="tp_numerics")
    class Root(keras.layers.Layer):
        """sqrt: NaN where its input is negative; an infinite gradient where it is 0."""

        def call(self, x):
            return keras.ops.sqrt(x)

    return Root


@pytest.fixture(scope="module")
def nan_models(tmp_path_factory):
    """A model whose custom layer `root` makes NaN where its input is negative (samples 2 and
    5, one element each), the same compiled with jit_compile=True, exported as a SavedModel
    and converted to TFLite; a model where only the backward pass breaks (sqrt of a ReLU's
    zeros); the inputs and labels."""
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("numerics_nan")
    Root = _root_class()
    L = keras.layers
    keras.utils.set_random_seed(7)
    x = keras.Input((4,), name="x")
    h = L.Dense(4, name="d1", kernel_initializer="identity", bias_initializer="zeros")(x)
    model = keras.Model(x, L.Dense(3, name="d2")(Root(name="root")(h)), name="nan_model")
    model.save(folder / "nan.keras")
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    model.save(folder / "nan_jit.keras")
    model.export(str(folder / "nan_export"), verbose=False)
    (folder / "nan.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    x = keras.Input((4,), name="x")
    h = L.Dense(4, name="d1", kernel_initializer="identity", bias_initializer="zeros")(x)
    r = L.ReLU(name="relu")(h)
    backward = keras.Model(x, L.Dense(3, name="d2")(Root(name="root")(r)), name="backward_model")
    backward.save(folder / "backward.keras")

    rng = np.random.default_rng(1)
    data = (np.abs(rng.normal(size=(7, 4))) + 0.1).astype("float32")
    data[2, 1], data[5, 3] = -1.0, -2.0
    np.save(folder / "x.npy", data)
    labels = rng.normal(size=(7, 3)).astype("float32")
    np.save(folder / "y.npy", labels)
    return {"folder": folder, "data": data, "labels": labels, **{k: folder / v for k, v in (
        ("keras", "nan.keras"), ("jit", "nan_jit.keras"), ("savedmodel", "nan_export"), ("tflite", "nan.tflite"),
        ("backward", "backward.keras"), ("x", "x.npy"), ("y", "y.npy"))}}


def _bad_rows(values):
    """Per sample: NaN, +Inf and -Inf counts, computed with NumPy from the values themselves."""
    flat = np.asarray(values).reshape(len(values), -1)
    return np.stack([np.isnan(flat).sum(1), np.isposinf(flat).sum(1), np.isneginf(flat).sum(1)], axis=1)


def _check_record(record, values):
    """A nanhunt record against the values Keras (or TFLite) computes for that layer."""
    counts = _bad_rows(values)
    rows = np.flatnonzero(counts.any(axis=1))
    assert record["finite"] is (rows.size == 0), record
    assert [record["nan"], record["posinf"], record["neginf"]] == counts.sum(axis=0).tolist()
    assert record["nonfinite_samples"] == rows.size
    assert [s["row"] for s in record["samples"]] == rows.tolist()
    assert [[s["nan"], s["posinf"], s["neginf"]] for s in record["samples"]] == counts[rows].tolist()


def _keras_outputs(path, data):
    import keras

    model = keras.saving.load_model(path, compile=False)
    return {layer.name: keras.Model(model.inputs, layer.output).predict(data, verbose=0)
            for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}


def test_nanhunt_names_the_layer_that_makes_nan_and_its_samples(nan_models, cli):
    values = _keras_outputs(nan_models["keras"], nan_models["data"])
    assert np.isfinite(values["d1"]).all() and not np.isfinite(values["root"]).all()  # the model is what it says
    r = cli("nanhunt", "-m", nan_models["keras"], nan_models["x"], "--json", "-b", "3")
    assert r.exit_code == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["samples"] == 7 and report["finite"] is False and report["backward"] is None
    assert report["inputs"][0]["name"] == "x" and report["inputs"][0]["finite"] is True
    forward = report["forward"]
    assert (forward["culprit"], forward["first_nonfinite"], forward["culprit_first_sample"]) == ("root", "root", 2)
    assert [r["name"] for r in forward["layers"]] == ["d1", "root", "d2"]
    for record in forward["layers"]:
        _check_record(record, values[record["name"]])
        assert record["inputs_finite"] is True
    assert [s["source"] for s in forward["layers"][1]["samples"]] == [f"{nan_models['x']}[2]",
                                                                       f"{nan_models['x']}[5]"]
    # the table on stderr, the same verdict
    r = cli("nanhunt", "-m", nan_models["keras"], nan_models["x"])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == (
        f"first non-finite: layer 'root' (Root) makes NaN or Inf from finite inputs in 2 sample(s), first in "
        f"sample 2 ({nan_models['x']}[2])")
    # the API returns what --json prints
    assert tensorprobe.nanhunt(nan_models["keras"], nan_models["x"], batch_size=3) == report


def test_check_numerics_blames_an_op_of_the_same_layer(nan_models):
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(nan_models["keras"], compile=False)
    tf.debugging.enable_check_numerics()
    try:
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            model(nan_models["data"])
    finally:
        tf.debugging.disable_check_numerics()
    # eagerly it names the op and the layer whose call ran it, and counts the same NaNs
    message = str(e.value)
    assert 'eagerly-executing op "Sqrt"' in message and "calling Root.call()" in message
    assert "# of +NaN elements: 2" in message
    assert tensorprobe.nanhunt(model, nan_models["data"])["forward"]["culprit"] == "root"


def test_nanhunt_on_an_input_that_is_already_nan_blames_no_layer(plain, cli, tmp_path):
    data = plain["data"].copy()
    data[3, 0] = np.nan
    data[6, 2] = -np.inf
    np.save(tmp_path / "bad.npy", data)
    r = cli("nanhunt", "-m", plain["model"], tmp_path / "bad.npy", "--json")
    assert r.exit_code == 1, r.stderr
    report = json.loads(r.stdout)
    (x,) = report["inputs"]
    assert (x["finite"], x["nan"], x["posinf"], x["neginf"]) == (False, 1, 0, 1)
    assert [s["row"] for s in x["samples"]] == [3, 6]
    values = _keras_outputs(plain["model"], data)
    forward = report["forward"]
    assert forward["culprit"] is None and forward["first_nonfinite"] == "d1"
    for record in forward["layers"]:
        _check_record(record, values[record["name"]])
        assert record["inputs_finite"] is False
    r = cli("nanhunt", "-m", plain["model"], tmp_path / "bad.npy")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "every non-finite output comes from the inputs, already non-finite in those samples")


def test_nanhunt_exits_0_on_a_healthy_model(plain, cli):
    r = cli("nanhunt", "-m", plain["model"], plain["x"], "--json", "--backward")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["finite"] is True and report["forward"]["culprit"] is None
    assert report["backward"]["target"] == "top" and report["backward"]["finite"] is True
    assert [r["name"] for r in report["backward"]["layers"]] == ["gradients/d2", "gradients/d1"]
    r = cli("nanhunt", "-m", plain["model"], plain["x"])
    assert r.exit_code == 0 and r.stderr.strip().splitlines()[-1] == "every output is finite"


def test_nanhunt_backward_finds_the_sqrt_at_zero(nan_models, cli):
    import keras
    import tensorflow as tf

    data, labels = nan_models["data"], nan_models["labels"]
    model = keras.saving.load_model(nan_models["backward"], compile=False)
    d1, relu, root, d2 = (model.get_layer(n) for n in ("d1", "relu", "root", "d2"))
    with tf.GradientTape(persistent=True) as tape:  # the same loss, by hand
        h = d1(data)
        tape.watch(h)
        r = relu(h)
        tape.watch(r)
        s = root(r)
        tape.watch(s)
        o = d2(s)
        tape.watch(o)
        per_sample = tf.reduce_mean(tf.reshape(keras.losses.get("mse")(labels, o), (len(data), -1)), axis=1)
    grads = {name: tape.gradient(per_sample, t).numpy() for name, t in (("d1", h), ("relu", r), ("root", s),
                                                                          ("d2", o))}
    assert all(np.isfinite(v).all() for v in (h, r, s, o))  # only the backward pass breaks
    assert not np.isfinite(grads["relu"]).all() and np.isfinite(grads["root"]).all()

    r = cli("nanhunt", "-m", nan_models["backward"], nan_models["x"], "--backward", "--labels", nan_models["y"],
            "--loss", "mse", "--json")
    assert r.exit_code == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["forward"]["finite"] is True
    backward = report["backward"]
    assert backward["target"] == "loss:mse"
    assert [r["layer"] for r in backward["layers"]] == ["d2", "root", "relu", "d1"]
    assert (backward["culprit"], backward["after"]) == ("gradients/relu", "gradients/root")
    for record in backward["layers"]:
        _check_record(record, grads[record["layer"]])
        assert record["forward_finite"] is True
    r = cli("nanhunt", "-m", nan_models["backward"], nan_models["x"], "--backward", "--labels", nan_models["y"],
            "--loss", "mse")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "first non-finite gradient: w.r.t. the output of layer 'relu' (ReLU), with the forward pass finite, in "
        f"2 sample(s), first in sample 2 ({nan_models['x']}[2]); the gradient of 'gradients/root', before it in "
        "backward order, is finite there")


def test_nanhunt_runs_its_own_function_on_a_jit_compiled_model_and_under_xla(nan_models, cli):
    values = _keras_outputs(nan_models["keras"], nan_models["data"])
    for extra in ((), ("--jit",)):
        r = cli("nanhunt", "-m", nan_models["jit"], nan_models["x"], "--json", *extra)
        assert r.exit_code == 1, r.stderr
        forward = json.loads(r.stdout)["forward"]
        assert forward["culprit"] == "root"
        for record in forward["layers"]:
            _check_record(record, values[record["name"]])


@pytest.mark.parametrize("kind", ["savedmodel", "tflite"])
def test_nanhunt_on_graph_formats_names_the_same_layer(nan_models, cli, kind):
    if kind == "tflite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(str(nan_models["tflite"]))
        run = interpreter.get_signature_runner()
        (out,) = run(x=nan_models["data"]).values()
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(nan_models["savedmodel"]))
        out = loaded.serve(nan_models["data"]).numpy()
    r = cli("nanhunt", "-m", nan_models[kind], nan_models["x"], "--json")
    assert r.exit_code == 1, r.stderr
    forward = json.loads(r.stdout)["forward"]
    assert forward["culprit"] == "root" and forward["first_nonfinite"] == "root"
    records = {rec["name"]: rec for rec in forward["layers"]}
    assert records["d1"]["finite"] is True
    assert [s["row"] for s in records["root"]["samples"]] == [2, 5] and records["root"]["nan"] == 2
    _check_record(records["d2"], out)  # the model's own output, run by its own runtime
    r = cli("nanhunt", "-m", nan_models[kind], nan_models["x"], "--backward")
    assert r.exit_code == 2
    assert error_line(r) == (f"error: --backward needs gradients, which only a Keras model gives; "
                             f"{nan_models[kind]} holds only a graph")


def test_nanhunt_options_that_need_backward(plain, cli):
    r = cli("nanhunt", "-m", plain["model"], plain["x"], "--loss", "mse")
    assert r.exit_code == 2 and error_line(r).startswith("error: --loss goes with --backward")
    r = cli("nanhunt", "-m", plain["model"], plain["x"], "--backward", "--labels", plain["x"])
    assert r.exit_code == 2
    assert error_line(r) == "error: --labels goes with --loss NAME (or --target loss:NAME)"
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.nanhunt(plain["model"], plain["data"], loss="mse")
    assert str(e.value) == "loss goes with backward" and e.value.argument == "loss"


# ---- validate -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A chain of Dense layers of one width (so one layer's values fit another's place), a
    layer whose output ignores its input (`const`, zero kernel), a dump of every layer and the
    model input, and the same model as a SavedModel with its own dump."""
    import keras

    folder = tmp_path_factory.mktemp("numerics_chain")
    L = keras.layers
    keras.utils.set_random_seed(3)
    x = keras.Input((6,), name="x")
    h1 = L.Dense(5, activation="tanh", name="d1")(x)
    h2 = L.Dense(5, activation="tanh", name="d2")(h1)
    h3 = L.Dense(5, name="d3")(h2)
    const = L.Dense(3, kernel_initializer="zeros", bias_initializer="ones", name="const")(h3)
    model = keras.Model(x, [L.Dense(2, name="d4")(h3), const], name="chain")
    model.save(folder / "chain.keras")
    model.export(str(folder / "chain_export"), verbose=False)
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(9, 6)).astype("float32"))
    layers = ["x", "d1", "d2", "d3", "d4", "const"]
    tensorprobe.dump(folder / "chain.keras", folder / "x.npy", folder / "chain.h5", layers=layers, batch_size=4)
    tensorprobe.dump(folder / "chain_export", folder / "x.npy", folder / "export.h5", all_layers=True)
    return {"folder": folder, "model": folder / "chain.keras", "x": folder / "x.npy", "dump": folder / "chain.h5",
            "export": folder / "export.h5", "layers": layers}


def _statuses(report):
    return {d["name"]: d["status"] for d in report["datasets"]}


def test_validate_replays_every_layer_of_a_correct_dump(chain, cli):
    r = cli("validate", chain["dump"], "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["valid"] is True and report["first_mismatch"] is None and report["model_changed"] is False
    assert report["end_to_end"] == {"checked": True, "why": None, "mismatches": []}
    assert _statuses(report) == {"x": "matched end to end", "d1": "replayed", "d2": "replayed", "d3": "replayed",
                                 "d4": "replayed", "const": "insensitive"}
    by_name = {d["name"]: d for d in report["datasets"]}
    assert by_name["d2"]["inputs"] == ["d1"] and by_name["d1"]["inputs"] == ["x"]
    assert by_name["const"]["why"] == "its output does not move when its stored inputs are perturbed"
    r = cli("validate", chain["dump"])
    assert r.exit_code == 0
    assert r.stderr.splitlines() == [
        "x: matched end to end: cannot be run alone: it is a model input", "d1: replayed", "d2: replayed",
        "d3: replayed", "d4: replayed",
        "const: insensitive: its output does not move when its stored inputs are perturbed", "no mismatch"]
    assert tensorprobe.validate(chain["dump"]) == report


CORRUPTIONS = {
    "replaced": lambda v, other: other,
    "zeroed": lambda v, other: np.zeros_like(v),
    "scaled": lambda v, other: v * np.float32(1.01),
    "noised": lambda v, other: v + np.random.default_rng(9).normal(scale=1e-3, size=v.shape).astype(v.dtype),
    "rows_swapped": lambda v, other: v[[1, 0, *range(2, len(v))]],
}


def _corrupt(chain, folder, name, how):
    import shutil

    bad = folder / f"{name}-{how}.h5"
    shutil.copy(chain["dump"], bad)
    with h5py.File(bad, "r+") as f:
        ds = f[f"activations/{name}"]
        other = f["activations/d3" if name != "d3" else "activations/d2"][()]
        ds[...] = CORRUPTIONS[how](ds[()], other)
        # the corruption is real
        assert not np.allclose(ds[()], h5py.File(chain["dump"], "r")[f"activations/{name}"][()])
    return bad


@pytest.mark.parametrize("name,how", [("d2", how) for how in sorted(CORRUPTIONS)] +
                         [("x", how) for how in sorted(CORRUPTIONS) if how != "replaced"])  # x: 6 columns, d3: 5
def test_validate_names_exactly_the_corrupted_dataset(chain, cli, tmp_path, name, how):
    bad = _corrupt(chain, tmp_path, name, how)
    r = cli("validate", bad, "--json")
    assert r.exit_code == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["valid"] is False and report["first_mismatch"] == name
    assert [d["name"] for d in report["datasets"] if d["status"] == "mismatch"] == [name]
    assert report["end_to_end"]["mismatches"] == [name]
    statuses = _statuses(report)
    assert all(statuses[n] in ("replayed", "matched end to end", "insensitive") for n in statuses if n != name)
    r = cli("validate", bad)
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == f"first mismatch: {name}"


def test_validate_without_its_inputs_replays_the_chain_alone(chain, cli, tmp_path):
    import shutil

    shutil.copy(chain["model"], tmp_path / "chain.keras")
    np.save(tmp_path / "x.npy", np.load(chain["x"]))
    dump = tmp_path / "moved.h5"
    tensorprobe.dump(tmp_path / "chain.keras", tmp_path / "x.npy", dump, layers=chain["layers"])
    (tmp_path / "x.npy").unlink()
    with h5py.File(dump, "r+") as f:
        f["activations/d2"][0, 0] += 0.5
    r = cli("validate", dump, "--json")
    assert r.exit_code == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["end_to_end"] == {"checked": False, "mismatches": [],
                                    "why": f"its input '{tmp_path / 'x.npy'}' is not a file that can be read again"}
    assert _statuses(report) == {"x": "not checked", "d1": "replayed", "d2": "mismatch", "d3": "replayed",
                                 "d4": "replayed", "const": "insensitive"}
    worst = next(d for d in report["datasets"] if d["name"] == "d2")["replay"]["worst"]
    assert (worst["sample"], worst["position"]) == (0, [0])
    assert worst["b"] - worst["a"] == pytest.approx(0.5, abs=1e-6)
    (tmp_path / "chain.keras").unlink()  # the recorded model gone: -m names another
    r = cli("validate", dump)
    assert r.exit_code == 2 and error_line(r) == (
        f"error: '{dump}' was made by model '{tmp_path / 'chain.keras'}', which is no longer there; give it with "
        "--model")
    r = cli("validate", dump, "-m", chain["model"], "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["first_mismatch"] == "d2"


def test_validate_a_graph_format_says_why_no_layer_runs_alone(chain, cli):
    r = cli("validate", chain["export"], "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["end_to_end"]["checked"] is True
    why = "cannot be run alone: a graph's layers are name scopes over its ops, not layers to call"
    assert {d["name"]: (d["status"], d["why"]) for d in report["datasets"]} == {
        n: ("matched end to end", why) for n in ("d1", "d2", "d3", "d4", "const")}


def test_validate_reports_a_flipped_byte_as_the_checksum_error(chain, cli, tmp_path):
    bad = corrupted_copy(chain["dump"], tmp_path / "flipped.h5", "activations/d3")
    r = cli("validate", bad)
    assert r.exit_code == 1
    assert error_line(r) == f"error: '{bad}': dataset /activations/d3 {CHECKSUM_WORDS}"


def test_nanhunt_and_validate_help_import_no_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tensorprobe.cli import cli\n"
        "for args in (['nanhunt', '--help'], ['validate', '--help'], ['nanhunt', '-m', 'missing.keras', 'x.npy']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code in (0, 2), (args, r.output)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'h5py') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines() == ["[]"]


def test_nanhunt_on_an_onnx_file_names_the_scope_that_makes_nan(nan_models, cli, tmp_path):
    import onnx  # the test extra installs onnx and onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(4)
    weights = [numpy_helper.from_array(np.eye(4, dtype="float32"), "fc.weight"),
               numpy_helper.from_array(np.zeros(4, "float32"), "fc.bias"),
               numpy_helper.from_array(rng.normal(size=(3, 4)).astype("float32"), "head.weight"),
               numpy_helper.from_array(np.zeros(3, "float32"), "head.bias")]
    nodes = [  # torch.onnx's naming: /module/OpType, outputs <node>_output_0
        helper.make_node("Gemm", ["input", "fc.weight", "fc.bias"], ["/fc/Gemm_output_0"], name="/fc/Gemm", transB=1),
        helper.make_node("Sqrt", ["/fc/Gemm_output_0"], ["/root/Sqrt_output_0"], name="/root/Sqrt"),
        helper.make_node("Gemm", ["/root/Sqrt_output_0", "head.weight", "head.bias"], ["output"], name="/head/Gemm",
                         transB=1)]
    graph = helper.make_graph(nodes, "torch_jit", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], weights)
    model = helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "nan.onnx")
    (out,) = ReferenceEvaluator(model).run(None, {"input": nan_models["data"]})
    r = cli("nanhunt", "-m", tmp_path / "nan.onnx", nan_models["x"], "--json")
    assert r.exit_code == 1, r.stderr
    forward = json.loads(r.stdout)["forward"]
    records = {rec["name"]: rec for rec in forward["layers"]}
    assert forward["culprit"] == "root" and records["fc"]["finite"] is True
    assert [s["row"] for s in records["root"]["samples"]] == [2, 5] and records["root"]["nan"] == 2
    _check_record(records["head"], out)
