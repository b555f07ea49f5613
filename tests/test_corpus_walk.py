"""The Keras walk on models built the ordinary way: a Siamese net (a nested encoder shared by
two inputs), a keras-hub ViT whose MLP names its Dense layers `dense_1` and `dense_2`, and a
Sequential built by calling it once on one sample. Every value is computed again by Keras:
sub-models, the shared encoder called on each input by hand, the layers' own calls recorded
while Keras runs the model."""

import inspect
import json

import h5py
import numpy as np
import pytest

from conftest import error_line

ATOL = 1e-5


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    import keras
    import keras_hub

    folder = tmp_path_factory.mktemp("walk")
    L = keras.layers
    rng = np.random.default_rng(11)
    keras.utils.set_random_seed(11)

    # Siamese: Keras' _nodes_by_depth lists enc(right) before enc(left), proj left first.
    enc = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="e1"), L.Dense(4, name="e2")],
                           name="encoder")
    left, right = keras.Input((6,), name="left"), keras.Input((6,), name="right")
    proj = L.Dense(4, name="proj")
    d = keras.ops.abs(L.Subtract(name="sub")([proj(enc(left)), proj(enc(right))]))
    siamese = keras.Model([left, right], L.Dense(1, name="head")(d), name="siamese")
    siamese.save(folder / "siamese.keras")
    siamese.export(str(folder / "siamese_export"), verbose=False)
    np.save(folder / "left.npy", rng.normal(size=(5, 6)).astype("float32"))
    np.save(folder / "right.npy", rng.normal(size=(5, 6)).astype("float32"))

    # keras-hub ViT, built in a process that has already numbered Dense and Softmax layers
    for _ in range(3):
        L.Dense(1), L.Softmax()
    vit = keras_hub.models.ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=2, num_heads=2,
                                       hidden_dim=8, mlp_dim=16)
    vit.save(folder / "vit.keras")
    vit.export(str(folder / "vit_export"), verbose=False)
    np.save(folder / "images.npy", rng.normal(size=(3, 8, 8, 3)).astype("float32"))

    # A Sequential without an Input, built by calling it once on one sample.
    seq = keras.Sequential([L.Dense(7), L.BatchNormalization(), L.Dense(3)])
    seq(np.zeros((1, 6)))
    bn = seq.layers[1]
    bn.moving_mean.assign(np.linspace(-1, 1, 7).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 7).astype("float32"))
    seq.save(folder / "called.keras")
    np.save(folder / "x40.npy", rng.normal(size=(40, 6)).astype("float32"))  # > one default batch of 32
    return folder


def load(path):
    import keras

    return keras.saving.load_model(path)


def read(path):
    found = {}
    with h5py.File(path, "r") as f:
        f["activations"].visititems(
            lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def dump(cli, model, out, *args):
    r = cli("dump", "-q", "-m", model, "-o", out, *args)
    assert r.exit_code == 0, r.stderr
    return read(out)


def records(cli, model):
    r = cli("layers", model, "--json")
    assert r.exit_code == 0, r.stderr
    return {d["path"]: d for d in json.loads(r.stdout)}


# 1. A nested model shared by two inputs: calls numbered in the order the model makes them

def siamese_expected(folder):
    """Every layer call of the Siamese net, from Keras: the encoder and its layers called on
    each input by hand, the layers after it from sub-models of the model."""
    import keras

    model = load(folder / "siamese.keras")
    x = [np.load(folder / "left.npy"), np.load(folder / "right.npy")]
    enc, proj = model.get_layer("encoder"), model.get_layer("proj")
    expected = {}
    for k, side in enumerate(x):  # call_0 reads `left`, the model's first input
        encoded = np.asarray(enc(side))
        expected[f"encoder/__output__/call_{k}"] = encoded
        for name in ("e1", "e2"):
            expected[f"encoder/{name}/call_{k}"] = np.asarray(keras.Model(enc.inputs, enc.get_layer(name).output)(side))
        expected[f"proj/call_{k}"] = np.asarray(proj(encoded))
    for op in model.operations:
        if op.name not in ("left", "right", "encoder", "proj"):
            expected[op.name] = np.asarray(keras.Model(model.inputs, op.output)(x))
    assert sorted(expected)[:2] == ["absolute", "encoder/__output__/call_0"]
    return expected


def test_siamese_calls_numbered_by_their_inputs(cli, walk, tmp_path):
    feed = ("--input", f"left={walk / 'left.npy'}", "--input", f"right={walk / 'right.npy'}")
    expected = siamese_expected(walk)
    values = dump(cli, walk / "siamese.keras", tmp_path / "k.h5", "--all", *feed)
    assert sorted(values) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_allclose(values[path], value, atol=ATOL, err_msg=path)
    # the left and right calls really differ, so a swap could not pass
    assert np.abs(expected["encoder/__output__/call_0"] - expected["encoder/__output__/call_1"]).max() > 0.1

    # the export: the same paths for the same calls (its inline `abs` has no scope of its own)
    exported = dump(cli, walk / "siamese_export", tmp_path / "e.h5", "--all", *feed)
    assert sorted(exported) == sorted(set(expected) - {"absolute"})
    for path, value in exported.items():
        np.testing.assert_allclose(value, expected[path], atol=ATOL, err_msg=path)

    r = cli("compare", walk / "siamese.keras", walk / "siamese_export", *feed, "--atol", "1e-5", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["first_divergence"] is None
    assert {p["path"] for p in result["pairs"]} >= {"encoder/call_0", "encoder/call_1", "proj/call_0", "proj/call_1"}
    assert all(p["status"] == "ok" for p in result["pairs"])


def test_siamese_layers_count_each_call(cli, walk):
    rows = records(cli, walk / "siamese.keras")
    assert [(rows[p]["calls"], rows[p]["output_shape"]) for p in ("encoder", "encoder/e1", "proj", "sub")] == [
        (2, [None, 4]), (2, [None, 8]), (2, [None, 4]), (1, [None, 4])]


def test_call_order_on_keras_nodes(walk):
    """graph._call_order over Keras' own nodes: every node once, each after the nodes it reads,
    the encoder's call on the first input first."""
    import keras

    from tensorprobe.backends.keras.graph import _call_order, _keras3_nodes

    model = load(walk / "siamese.keras")
    nodes, inputs, _ = _keras3_nodes(model)
    ordered = _call_order(nodes, inputs)
    assert sorted(map(id, ordered)) == sorted(map(id, nodes))
    made = {id(t) for t in inputs}
    for _, node_inputs, _, outputs in ordered:
        assert all(id(t) in made for t in node_inputs)
        made.update(id(t) for t in outputs)
    encoders = [id(node_inputs[0]) for layer, node_inputs, _, _ in ordered if layer.name == "encoder"]
    assert encoders == [id(t) for t in model.inputs]
    assert [layer.name for layer, *_ in nodes][:2] == ["encoder", "encoder"]  # Keras: right first
    assert [id(n[1][0]) for n in nodes[:2]] == [id(t) for t in model.inputs][::-1]
    assert isinstance(ordered[0][0], keras.Model)


# 3. keras-hub ViT: a name the author gave is never renumbered

def mlp_paths():
    return [f"vit_encoder/transformer_block_{i}/mlp/dense_{k}" for i in (1, 2) for k in (1, 2)]


def vit_dense_outputs(folder):
    """What each MLP Dense returns while Keras runs the ViT, keyed by its path (Keras' names)."""
    vit = load(folder / "vit.keras")
    found = {}
    for block in (1, 2):
        mlp = next(layer for layer in vit.get_layer("vit_encoder")._flatten_layers(include_self=False)
                   if layer.name == f"transformer_block_{block}").mlp
        for dense in (mlp.dense_1, mlp.dense_2):
            path = f"vit_encoder/transformer_block_{block}/mlp/{dense.name}"
            dense.call = lambda *a, _call=dense.call, _p=path, **k: found.setdefault(_p, _call(*a, **k))
    vit(np.load(folder / "images.npy"))
    return {path: np.asarray(value) for path, value in found.items()}


def test_vit_keeps_the_mlp_names_keras_hub_gives(cli, walk, tmp_path):
    rows = records(cli, walk / "vit.keras")
    mlp = "vit_encoder/transformer_block_1/mlp"
    assert [p for p in rows if p.startswith(mlp + "/")] == [f"{mlp}/dense_1", f"{mlp}/dense_2", f"{mlp}/dropout"]
    assert [rows[f"{mlp}/dense_{k}"]["output_shape"] for k in (1, 2)] == [[None, 5, 16], [None, 5, 8]]

    expected = vit_dense_outputs(walk)
    assert sorted(expected) == sorted(mlp_paths())
    selection = [a for p in mlp_paths() for a in ("-l", p)]
    values = dump(cli, walk / "vit.keras", tmp_path / "k.h5", *selection, walk / "images.npy")
    exported = dump(cli, walk / "vit_export", tmp_path / "e.h5", *selection, walk / "images.npy")
    for path in mlp_paths():
        np.testing.assert_allclose(values[path], expected[path], atol=ATOL, err_msg=path)
        np.testing.assert_allclose(exported[path], expected[path], atol=ATOL, err_msg=path)

    r = cli("compare", walk / "vit.keras", walk / "vit_export", walk / "images.npy", "--match", "mlp/dense",
            "--atol", "1e-5", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert [p["path"] for p in result["pairs"]] == mlp_paths() and result["first_divergence"] is None


def test_vit_generated_names_still_renumbered(cli, walk):
    """MultiHeadAttention makes its Softmax without a name: Keras numbered it from its
    counter (`softmax_N`) while loading, and the path names it by its class."""
    vit = load(walk / "vit.keras")
    block = next(layer for layer in vit.get_layer("vit_encoder")._flatten_layers(include_self=False)
                 if layer.name == "transformer_block_2")
    assert block.mha._softmax.name.startswith("softmax_")
    rows = records(cli, walk / "vit.keras")
    assert rows["vit_encoder/transformer_block_2/mha/softmax"]["class"] == "Softmax"
    assert not any("softmax_" in p for p in rows)


def test_in_memory_model_keeps_every_name():
    """A model built in memory: where its names came from is not known, so none is rewritten."""
    import keras

    import tensorprobe

    keras.layers.Softmax()  # whatever ran before: the attention's softmax is numbered
    x = keras.Input((3, 4), name="x")
    mha = keras.layers.MultiHeadAttention(num_heads=1, key_dim=2, name="mha")
    model = keras.Model(x, mha(x, x))
    assert mha._softmax.name.startswith("softmax_")
    paths = [row["path"] for row in tensorprobe.load(model).layers()]
    assert f"mha/{mha._softmax.name}" in paths and "mha/softmax" not in paths


def test_generated_names_keras_internals():
    """graph.generated_names wraps Keras 3's Operation.__init__(self, name=None) and tf_keras'
    Layer._init_set_name(self, name, zero_based=True) while a model loads; a Keras upgrade
    that changes either fails here."""
    import keras
    import tf_keras
    from keras.src.ops.operation import Operation
    from tf_keras.src.engine.base_layer import Layer as TFKerasLayer

    from tensorprobe.backends.keras import graph

    assert inspect.getfullargspec(Operation.__init__).args == ["self", "name"]
    assert inspect.getfullargspec(TFKerasLayer._init_set_name).args == ["self", "name", "zero_based"]
    for module, owner, method in ((keras, Operation, "__init__"), (tf_keras, TFKerasLayer, "_init_set_name")):
        original = owner.__dict__[method]
        with graph.generated_names(module):
            auto, named = module.layers.Dense(2), module.layers.Dense(2, name="dense_1")
            norm = module.layers.LayerNormalization()
        assert owner.__dict__[method] is original
        after = module.layers.Dense(2)
        assert graph._GENERATED.get(auto) == "dense" and graph._GENERATED.get(norm) == "layer_normalization"
        assert named not in graph._GENERATED and after not in graph._GENERATED
        assert graph._stable_names([named, auto, norm, after]) == ["dense_1", "dense", "layer_normalization",
                                                                  after.name]
        given = [module.layers.Dense(2, name="dense"), module.layers.Dense(2, name="dense_1")]
        assert graph._stable_names([auto, *given]) == ["dense_2", "dense", "dense_1"]  # given names passed over


# 10. A Sequential built by calling it once on one sample: the batch axis stays open

def by_hand(model, x):
    dense, bn, head = model.layers
    return {
        dense.name: np.asarray(dense(x)),
        bn.name: np.asarray(bn(dense(x), training=False)),
        head.name: np.asarray(head(bn(dense(x), training=False))),
    }


def test_called_sequential_runs_any_batch_size(cli, walk, tmp_path):
    model = load(walk / "called.keras")
    assert tuple(model.inputs[0].shape) == (1, 6)  # what Keras records
    rows = records(cli, walk / "called.keras")
    assert [rows[layer.name]["output_shape"] for layer in model.layers] == [[None, 7], [None, 7], [None, 3]]

    x = np.load(walk / "x40.npy")
    expected = by_hand(model, x)
    values = dump(cli, walk / "called.keras", tmp_path / "a.h5", "--all", walk / "x40.npy")  # default batch size
    assert sorted(values) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(values[name], value, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(expected[model.layers[-1].name], np.asarray(model(x)), atol=ATOL)


def test_called_sequential_graph_tensors(cli, walk, tmp_path):
    r = cli("tensors", walk / "called.keras", "--json")
    assert r.exit_code == 0, r.stderr
    tensors = json.loads(r.stdout)
    assert tensors[0]["op"] == "Placeholder" and tensors[0]["shape"] == [None, 6]
    last = [t["name"] for t in tensors if t["op"] == "BiasAdd"][-1]
    r = cli("dump", "-q", "-m", walk / "called.keras", "-t", last, "-o", tmp_path / "t.h5", walk / "x40.npy")
    assert r.exit_code == 0, r.stderr
    found = []
    with h5py.File(tmp_path / "t.h5", "r") as f:
        f["tensors"].visititems(lambda _, o: found.append(o[()]) if isinstance(o, h5py.Dataset) else None)
    (dataset,) = found
    model = load(walk / "called.keras")
    np.testing.assert_allclose(dataset, np.asarray(model(np.load(walk / "x40.npy"))), atol=ATOL)


def test_called_sequential_wrong_width_is_one_error_line(cli, walk, tmp_path):
    np.save(tmp_path / "x4.npy", np.ones((5, 4), "float32"))
    r = cli("dump", "-q", "-m", walk / "called.keras", "--all", "-o", tmp_path / "a.h5", tmp_path / "x4.npy")
    assert r.exit_code == 1
    line = error_line(r)  # the input layer's name is Keras' own, made while loading
    assert line.startswith(f"error: {tmp_path / 'x4.npy'}: array of shape (5, 4) does not fit input 'input_layer")
    assert line.endswith("': expected (6,) for one sample or (N, 6) for a batch")


# A value the same for every sample: keras-hub ViT's position embedding is (1, N, D) while the
# batch is open; dumped once per sample (an attribute says so), with no per-sample gradient.

def test_vit_dump_all_stores_the_position_embedding_per_sample(cli, walk, tmp_path):
    vit = load(walk / "vit.keras")
    embedding = vit.get_layer("vit_patching_and_embedding")
    expected = np.asarray(embedding.position_embedding(np.arange(embedding.num_positions)[None]))
    assert expected.shape == (1, 5, 8)
    path = "vit_patching_and_embedding/position_embedding"
    out = tmp_path / "all.h5"
    r = cli("dump", "-q", "-m", walk / "vit.keras", "--all", "--gradients", "-o", out, walk / "images.npy")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        ds = f["activations"][path]
        assert ds.shape == (3, 5, 8) and ds.attrs["same_for_every_sample"]
        np.testing.assert_array_equal(ds[()], np.broadcast_to(expected, (3, 5, 8)))
        assert path not in f["gradients"] and "vit_patching_and_embedding/patch_embedding" in f["gradients"]
        whole = np.asarray(vit(np.load(walk / "images.npy")))
        np.testing.assert_allclose(f["activations/vit_encoder/__output__"][()], whole, atol=ATOL)
