"""The Keras internals graph.py relies on, checked directly so an upgrade fails here loudly."""

import numpy as np

from tensorprobe.backends.keras.graph import _keras3_nodes, _tf_keras_nodes, unroll


def test_keras3_node_walk_sees_every_layer_call_in_order(zoo, keras_model):
    model = keras_model(zoo["transfer.keras"])
    nodes, inputs, outputs = _keras3_nodes(model)
    assert [layer.name for layer, *_ in nodes] == [l.name for l in model.layers[1:]]
    assert inputs == list(model.inputs) and outputs == list(model.outputs)
    base = model.get_layer("vgg16")
    inner, _, _ = _keras3_nodes(base)
    assert [layer.name for layer, *_ in inner] == [l.name for l in base.layers[1:]]


def test_tf_keras_node_walk_sees_every_layer_call_in_order(zoo):
    import tf_keras

    model = tf_keras.models.load_model(zoo["keras2_transfer.h5"], compile=False)
    nodes, inputs, outputs = _tf_keras_nodes(model)
    assert [layer.name for layer, *_ in nodes] == [l.name for l in model.layers[1:]]
    x = np.zeros((1, 16, 16, 3), "float32")
    layer, node_inputs, call, _ = nodes[0]
    assert layer.name == "vgg16" and len(node_inputs) == 1
    got = call({id(node_inputs[0]): x}, False)
    np.testing.assert_allclose(np.asarray(got), model.get_layer("vgg16")(x).numpy(), atol=1e-6)


def test_only_the_layers_a_shallow_output_depends_on_are_called(zoo, keras_model):
    import keras

    graph = unroll(keras_model(zoo["transfer.keras"]), keras)
    origins = [origin for _, origin in graph.entries["vgg16/block1_conv2"].calls[0]]
    needed = graph.needed(origins)
    called = {path for path, e in graph.entries.items() for call in e.calls
              for _, (key, _) in call if key in needed and not e.children}
    assert called == {"vgg16/block1_conv1", "vgg16/block1_conv2"}
    all_origins = [o for _, o in graph.entries["predictions"].calls[0]]
    leaves = [p for p, e in graph.entries.items() if not e.children and e.class_name != "InputLayer"]
    assert len(graph.needed(all_origins)) == len(leaves)


def test_multi_head_attention_internals():
    """graph._attention_scores_computed asks `_compute_attention` for the scores; it relies on
    its positional signature, `_softmax` and `_flash_attention`."""
    import inspect

    import keras

    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
    x = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    mha(x, x)
    names = list(inspect.signature(mha._compute_attention).parameters)
    assert names[:6] == ["query", "key", "value", "attention_mask", "training", "return_attention_scores"]
    assert isinstance(mha._softmax, keras.layers.Softmax) and mha._flash_attention in (False, None)
    q, k, v = mha.query_dense(x), mha.key_dense(x), mha.value_dense(x)
    output, scores = mha._compute_attention(q, k, v, None, False, True)
    _, expected = mha(x, x, return_attention_scores=True)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(expected), atol=1e-6)


def test_operations_of_a_functional_model_are_listed_with_the_layers():
    """Keras 3 lists inline operations (`x + y`) in `.operations` only, with `.layers` a subset."""
    import keras

    x = keras.Input((3,))
    y = keras.layers.Dense(3, name="d")(x)
    model = keras.Model(x, keras.ops.relu(y + x))
    kinds = [type(op).__name__ for op in model.operations]
    assert kinds == ["InputLayer", "Dense", "Add", "Relu"]
    assert [op for op in model.operations if isinstance(op, keras.layers.Layer)] == model.layers
