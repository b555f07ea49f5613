"""Graph-format models, item by item: Keras 3 `model.export()` SavedModels of recurrent models
(issue 22 item 6). Every value is checked against the Keras model itself (a sub-model per
layer, or a layer called by hand)."""

import json

import h5py
import keras
import numpy as np
import pytest

from conftest import error_line

L = keras.layers


@pytest.fixture(scope="module")
def rnn(tmp_path_factory):
    """A masked LSTM -> GRU -> Bidirectional(LSTM) -> Dense model, its export and an input
    whose second sample is padded with zeros (masked steps)."""
    folder = tmp_path_factory.mktemp("rnn")
    keras.utils.set_random_seed(3)
    x = keras.Input((6, 3), name="x")
    h = L.Masking(name="mask")(x)
    h = L.LSTM(4, return_sequences=True, name="lstm")(h)
    h = L.GRU(4, return_sequences=True, name="gru")(h)
    h = L.Bidirectional(L.LSTM(3), name="bilstm")(h)
    model = keras.Model(x, L.Dense(2, name="head")(h), name="rnn")
    model.export(str(folder / "export"), verbose=False)
    data = np.random.default_rng(5).normal(size=(3, 6, 3)).astype("float32")
    data[1, 4:] = 0.0  # two masked steps
    np.save(folder / "x.npy", data)
    return {"model": model, "export": folder / "export", "x.npy": folder / "x.npy", "x": data}


def _keras_value(model, layer, x):
    return np.asarray(keras.Model(model.inputs, model.get_layer(layer).output)(x))


def _cells(model):
    """path -> cell of each recurrent layer (Bidirectional's included)."""
    bilstm = model.get_layer("bilstm")
    return {"lstm/lstm_cell": model.get_layer("lstm").cell, "gru/gru_cell": model.get_layer("gru").cell,
            "bilstm/forward_lstm/lstm_cell": bilstm.forward_layer.cell,
            "bilstm/backward_lstm/lstm_cell": bilstm.backward_layer.cell}


def test_rnn_export_layers_are_the_recurrent_layers(cli, rnn):
    r = cli("layers", rnn["export"], "--json")
    assert r.exit_code == 0, r.stderr
    got = {layer["path"]: layer for layer in json.loads(r.stdout)}
    model = rnn["model"]
    bilstm = model.get_layer("bilstm")
    expected = {name: model.get_layer(name) for name in ("mask", "lstm", "gru", "bilstm", "head")}
    expected |= {"bilstm/forward_lstm": bilstm.forward_layer, "bilstm/backward_lstm": bilstm.backward_layer}
    # with a mask, Keras' TensorFlow backend calls each cell once outside its loop (to shape the
    # masked outputs): that call is the cell's one output in the graph; its steps stay in the loop
    expected |= _cells(model)
    assert set(got) == set(expected)
    for path, layer in expected.items():
        assert got[path]["calls"] == 1, path
        assert got[path]["params"] == layer.count_params(), path
    for name in ("mask", "lstm", "gru", "bilstm", "head"):
        assert got[name]["output_shape"] == [None, *model.get_layer(name).output.shape[1:]], name
    assert got["bilstm/forward_lstm"]["output_shape"] == [None, 3]
    assert got["bilstm"]["class"] == "ConcatV2" and got["head"]["class"] == "BiasAdd"
    assert not any(layer["class"] in ("Enter", "Merge", "Switch", "Exit") for layer in got.values())
    r = cli("layers", rnn["export"])
    assert r.exit_code == 0, r.stderr
    assert "bilstm/forward_lstm" in r.stdout and "Traceback" not in r.stderr


def test_rnn_export_dump_matches_keras(cli, rnn, tmp_path):
    out = tmp_path / "rnn.h5"
    r = cli("dump", "-m", rnn["export"], "-l", "bilstm", "-l", "gru", "-l", "head", rnn["x.npy"], "-o", out)
    assert r.exit_code == 0, r.stderr
    model, x = rnn["model"], rnn["x"]
    with h5py.File(out, "r") as f:
        assert sorted(f["activations"]) == ["bilstm", "gru", "head"]
        for name in ("bilstm", "gru", "head"):
            np.testing.assert_allclose(f[f"activations/{name}"][()], _keras_value(model, name, x),
                                       rtol=1e-5, atol=1e-6, err_msg=name)


def test_rnn_export_dump_all_sub_layers_and_cells(cli, rnn, tmp_path):
    out = tmp_path / "all.h5"
    r = cli("dump", "-m", rnn["export"], "--all", rnn["x.npy"], "-o", out)
    assert r.exit_code == 0, r.stderr
    model, x = rnn["model"], rnn["x"]
    masked = _keras_value(model, "mask", x)
    gru = _keras_value(model, "gru", x)
    bilstm = model.get_layer("bilstm")
    mask = np.any(x != 0, axis=-1)  # what Masking passes on to the layers after it
    inputs_of = {"lstm/lstm_cell": masked, "gru/gru_cell": _keras_value(model, "lstm", x),
                 "bilstm/forward_lstm/lstm_cell": gru, "bilstm/backward_lstm/lstm_cell": gru}
    with h5py.File(out, "r") as f:
        for key, name in (("lstm/__output__", "lstm"), ("gru/__output__", "gru"), ("head", "head"),
                          ("bilstm/__output__", "bilstm"), ("mask", "mask")):
            np.testing.assert_allclose(f[f"activations/{key}"][()], _keras_value(model, name, x),
                                       rtol=1e-5, atol=1e-6, err_msg=name)
        for part, layer in (("forward_lstm", bilstm.forward_layer), ("backward_lstm", bilstm.backward_layer)):
            np.testing.assert_allclose(f[f"activations/bilstm/{part}/__output__"][()], np.asarray(layer(gru, mask=mask)),
                                       rtol=1e-5, atol=1e-6, err_msg=part)
        # the call that shapes the outputs: on the first step of the sequence as the layer gets it
        # (a backward layer's too, before it reverses it), from the initial (zero) states
        for path, cell in _cells(model).items():
            step = inputs_of[path][:, 0]
            states = [np.zeros((len(x), cell.units), "float32") for _ in np.atleast_1d(cell.state_size)]
            expected = np.asarray(cell(step, states if len(states) > 1 else states[0])[0])
            key = f"activations/{path}"
            np.testing.assert_allclose(f[key][()], expected, rtol=1e-5, atol=1e-6, err_msg=path)


def test_rnn_export_compare_with_keras(cli, rnn, tmp_path):
    path = tmp_path / "rnn.keras"
    rnn["model"].save(path)
    # the cells are left out: in the .keras file they run inside the loop (issue 22 item 5)
    r = cli("compare", path, rnn["export"], rnn["x.npy"], "--match", "^(mask|lstm|gru|bilstm|head)$|_lstm$", "--json")
    assert r.exit_code == 0, r.stderr
    pairs = {p["path"]: p for p in json.loads(r.stdout)["pairs"]}
    names = ["mask", "lstm", "gru", "bilstm/forward_lstm", "bilstm/backward_lstm", "bilstm", "head"]
    assert sorted(pairs) == sorted(names)
    assert all(pairs[name]["status"] == "ok" and pairs[name]["max_abs"] < 1e-6 for name in names), pairs


def test_loop_tensor_is_refused_with_its_reason(cli, rnn, tmp_path):
    r = cli("tensors", rnn["export"], "--json")
    # a matrix product of the GRU's step, in the loop's body
    step = next(t["name"] for t in json.loads(r.stdout) if "/gru_1/while/body/" in t["name"] and t["op"] == "MatMul")
    r = cli("dump", "-m", rnn["export"], "-t", step, rnn["x.npy"], "-o", tmp_path / "t.h5")
    assert r.exit_code == 2
    assert error_line(r) == (f"error: --tensor '{step}': is computed inside a while loop, once per iteration; "
                             "only values that leave the loop can be fetched")


# ---- a TensorFlow 1 frozen graph with a while loop (tf.compat.v1 control flow) -------------

@pytest.fixture(scope="module")
def tf1_loop(tmp_path_factory):
    """x -> `rnn` (a tanh RNN over 5 steps in a v1 while loop, its cell in `rnn/while/cell`)
    -> `head`; frozen; plus what a Session computes for `rnn`'s result and `head`."""
    import tensorflow as tf

    v1 = tf.compat.v1
    folder = tmp_path_factory.mktemp("tf1_loop")
    x_value = np.random.default_rng(2).normal(size=(4, 5, 3)).astype("float32")
    was_v2 = v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()  # Enter/Merge/Switch/NextIteration/Exit in the GraphDef itself
    try:
        graph = tf.Graph()
        with graph.as_default():
            v1.set_random_seed(4)
            x = v1.placeholder(tf.float32, (None, 5, 3), name="x")
            with v1.variable_scope("rnn"):
                w, u = v1.get_variable("w", (3, 4)), v1.get_variable("u", (4, 4))
                steps = tf.TensorArray(tf.float32, size=5).unstack(tf.transpose(x, [1, 0, 2]))

                def body(t, h):
                    with v1.variable_scope("cell"):
                        return t + 1, tf.tanh(tf.matmul(steps.read(t), w) + tf.matmul(h, u))

                _, h = v1.while_loop(lambda t, h: t < 5, body, [tf.constant(0), tf.zeros((tf.shape(x)[0], 4))])
            with v1.variable_scope("head"):
                y = tf.identity(tf.matmul(h, v1.get_variable("k", (4, 2))), name="y")
            with v1.Session() as session:
                session.run(v1.global_variables_initializer())
                expected = dict(zip(("rnn", "head"), session.run([h, y], {x: x_value})))
                frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["head/y"])
    finally:
        if was_v2:
            v1.enable_control_flow_v2()
    assert any(node.op == "NextIteration" for node in frozen.node)
    (folder / "loop.pb").write_bytes(frozen.SerializeToString())
    np.save(folder / "x.npy", x_value)
    return {"loop.pb": folder / "loop.pb", "x.npy": folder / "x.npy", "expected": expected}


def test_tf1_loop_layers_are_what_leaves_the_loop(cli, tf1_loop):
    r = cli("layers", tf1_loop["loop.pb"], "--json")
    assert r.exit_code == 0, r.stderr
    got = {layer["path"]: layer for layer in json.loads(r.stdout)}
    assert got["rnn"]["class"] == "Exit" and got["rnn"]["params"] == 3 * 4 + 4 * 4
    assert got["head"]["output_shape"] == [None, 2] and got["head"]["params"] == 4 * 2
    assert got["rnn/while/cell"]["output_shape"] is None  # its values never leave the loop
    r = cli("layers", tf1_loop["loop.pb"])
    assert r.exit_code == 0, r.stderr
    assert "outputs: head/y (None, 2) float32\n" in r.stdout  # no Merge/Switch of the loop


def test_tf1_loop_dump_all(cli, tf1_loop, tmp_path):
    out = tmp_path / "loop.h5"
    r = cli("dump", "-m", tf1_loop["loop.pb"], "--all", tf1_loop["x.npy"], "-o", out)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f["activations"]) == ["head", "rnn"]
        np.testing.assert_allclose(f["activations/head"][()], tf1_loop["expected"]["head"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["activations/rnn/__output__"][()], tf1_loop["expected"]["rnn"],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["activations/rnn/while"][()], tf1_loop["expected"]["rnn"], rtol=1e-5, atol=1e-6)
