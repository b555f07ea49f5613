"""Write tf.keras 2.x SavedModels that hold only a graph: no keras_metadata.pb, so tensorprobe
reads their name scopes, named after the layers as they are (`model_1/conv2d_1/...`). Run
in a subprocess with TF_USE_LEGACY_KERAS=1:  python make_keras2_graphs.py FOLDER

  keras2_full/      model_1, `model.save(dir, save_format="tf")` as written (tf_keras
                    rebuilds it: the tests' reference)
  keras2_graph/     the same folder without keras_metadata.pb
  keras2_export/    the same model through `tf.saved_model.save(model, dir)`
  siamese_full/, siamese_export/   a nested encoder and a Dense each called on two inputs,
                    saved both ways

model_1 holds layers really named `conv2d_1`, `dense` and `dense_1` (a Keras 3 reading would
take `dense_1` for a call of `dense`), a nested Sequential, a custom layer with two
sub-layers and an op of its own, an inline `+` (a TFOpLambda) and a BatchNormalization
whose ops sit in a `batchnorm` sub-scope.
"""

import os
import shutil
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

folder = sys.argv[1]
keras.utils.set_random_seed(5)
L = keras.layers


class HarmonicStacking(L.Layer):
    """A custom layer with two sub-layers; the product is computed in its own scope."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.proj = L.Dense(units, name="proj")
        self.gate = L.Dense(units, activation="sigmoid", name="gate")

    def call(self, x):
        return self.proj(x) * self.gate(x)


base = keras.Sequential(
    [keras.Input((6, 6, 4)), L.Conv2D(4, 3, padding="same", activation="relu", name="conv2d"),
     L.MaxPooling2D(2, name="max_pooling2d")],
    name="base",
)
inp = keras.Input((6, 6, 3), name="image")
x = L.Conv2D(4, 1, name="conv2d_1")(inp)
x = base(x)
h = L.GlobalAveragePooling2D(name="gap")(x)
s = HarmonicStacking(4, name="harmonic_stacking")(h)
x = L.Dense(5, activation="relu", name="dense")(s + h)
x = L.BatchNormalization(name="bn")(x)
out = L.Dense(3, activation="softmax", name="dense_1")(x)
model = keras.Model(inp, out, name="model_1")
rng = np.random.default_rng(5)
for weight in model.weights:  # biases start at zero; make them count
    if "bias" in weight.name:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))
bn = model.get_layer("bn")
bn.moving_mean.assign(rng.normal(0, 0.5, 5).astype("float32"))
bn.moving_variance.assign(rng.uniform(0.5, 2.0, 5).astype("float32"))

model.save(os.path.join(folder, "keras2_full"), save_format="tf")
shutil.copytree(os.path.join(folder, "keras2_full"), os.path.join(folder, "keras2_graph"))
os.remove(os.path.join(folder, "keras2_graph", "keras_metadata.pb"))
tf.saved_model.save(model, os.path.join(folder, "keras2_export"))

encoder = keras.Sequential(
    [keras.Input((5,)), L.Dense(4, activation="relu", name="e1"), L.Dense(3, name="e2")], name="encoder"
)
a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
ea, eb = encoder(a), encoder(b)
shared = L.Dense(2, name="shared")
siamese = keras.Model([a, b], L.Concatenate(name="cat")([shared(ea), shared(eb)]), name="siamese")
siamese.save(os.path.join(folder, "siamese_full"), save_format="tf")
tf.saved_model.save(siamese, os.path.join(folder, "siamese_export"))
