"""`tensorprobe layers`: paths, classes, shapes and parameter counts against Keras itself."""

import json

from conftest import error_line


def expected_layers(model, prefix=""):
    """(path, class, params, trainable) by walking `.layers` recursively."""
    import keras

    rows = []
    for layer in model.layers:
        rows.append((prefix + layer.name, type(layer).__name__, layer.count_params(), layer.trainable))
        if isinstance(layer, keras.Model):
            rows += expected_layers(layer, prefix + layer.name + "/")
    return rows


def test_json_lists_nested_layers_as_paths(cli, zoo, keras_model):
    r = cli("layers", zoo["transfer.keras"], "--json")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    records = json.loads(r.stdout)
    model = keras_model(zoo["transfer.keras"])
    assert [(d["path"], d["class"], d["params"], d["trainable"]) for d in records] == expected_layers(model)
    by_path = {d["path"]: d for d in records}
    conv = by_path["vgg16/block1_conv2"]
    assert conv["name"] == "block1_conv2" and conv["index"] == "1.2" and conv["depth"] == 1
    base = model.get_layer("vgg16")
    assert conv["output_shape"] == list(base.get_layer("block1_conv2").output.shape)
    assert by_path["predictions"]["output_shape"] == list(model.output.shape)
    assert by_path["predictions"]["index"] == str(model.layers.index(model.get_layer("predictions")))


def test_table_shows_tree_paths_and_footer(cli, zoo, keras_model):
    r = cli("layers", zoo["transfer.keras"])
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["transfer.keras"])
    lines = r.stdout.splitlines()
    row = next(line for line in lines if "vgg16/block1_conv2" in line)
    assert "├─" in row and "Conv2D" in row and "(None, 32, 32, 8)" in row
    last = next(line for line in lines if "vgg16/block3_pool" in line)
    assert "└─" in last
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    assert f"params:  {model.count_params():,} total, {trainable:,} trainable" in r.stdout
    assert "inputs:  image (None, 32, 32, 3) float32" in r.stdout


def test_filter_keeps_matching_paths(cli, zoo):
    r = cli("layers", zoo["transfer.keras"], "--json", "--filter", r"block\d_pool$")
    assert r.exit_code == 0, r.stderr
    assert [d["path"] for d in json.loads(r.stdout)] == [f"vgg16/block{i}_pool" for i in (1, 2, 3)]


def test_shared_and_multi_output_layers(cli, zoo):
    r = cli("layers", zoo["shared.keras"], "--json")
    shared = next(d for d in json.loads(r.stdout) if d["path"] == "shared")
    assert shared["calls"] == 2 and shared["output_shape"] == [None, 3]
    r = cli("layers", zoo["multi.keras"], "--json")
    lstm = next(d for d in json.loads(r.stdout) if d["path"] == "lstm")
    assert lstm["output_shape"] == [[None, 3], [None, 3], [None, 3]]


def test_keras2_file_lists_through_tf_keras(cli, zoo):
    import tf_keras

    r = cli("layers", zoo["keras2_transfer.h5"])
    assert r.exit_code == 0, r.stderr
    assert f"(tf_keras {tf_keras.__version__})" in r.stdout
    model = tf_keras.models.load_model(zoo["keras2_transfer.h5"], compile=False)
    r = cli("layers", zoo["keras2_transfer.h5"], "--json")
    paths = [d["path"] for d in json.loads(r.stdout)]
    assert paths == [p for p, *_ in expected_layers_tf(model)]


def expected_layers_tf(model, prefix=""):
    import tf_keras

    rows = []
    for layer in model.layers:
        rows.append((prefix + layer.name,))
        if isinstance(layer, tf_keras.Model):
            rows += expected_layers_tf(layer, prefix + layer.name + "/")
    return rows


def test_bad_filter_is_a_usage_error(cli, zoo):
    r = cli("layers", zoo["transfer.keras"], "--filter", "(")
    assert r.exit_code == 2 and "--filter" in error_line(r)
