"""Write Keras 2 (tf_keras) SavedModel folders, as `model.save(dir, save_format="tf")` did up
to TF 2.15. Run in a subprocess with TF_USE_LEGACY_KERAS=1:
    python make_keras2_savedmodel.py FOLDER

  keras2_savedmodel/   a VGG-style base, frozen, nested in a classifier with BatchNormalization
  keras2_lambda_savedmodel/   a model with a Lambda layer holding Python code
"""

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

folder = sys.argv[1]
keras.utils.set_random_seed(4)
L = keras.layers

inp = keras.Input((12, 12, 3))
x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inp)
x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv2")(x)
x = L.MaxPooling2D(2, name="block1_pool")(x)
base = keras.Model(inp, x, name="vgg16")
base.trainable = False

outer_in = keras.Input((12, 12, 3), name="image")
y = base(outer_in, training=False)
y = L.GlobalAveragePooling2D(name="gap")(y)
y = L.Dense(6, activation="relu", name="fc1")(y)
y = L.BatchNormalization(name="bn")(y)
out = L.Dense(3, activation="softmax", name="predictions")(y)
model = keras.Model(outer_in, out, name="transfer")
bn = model.get_layer("bn")
rng = np.random.default_rng(4)
bn.moving_mean.assign(rng.normal(0, 0.5, 6).astype("float32"))
bn.moving_variance.assign(rng.uniform(0.5, 2.0, 6).astype("float32"))
model.save(os.path.join(folder, "keras2_savedmodel"), save_format="tf")

lin = keras.Input((4,), name="x")
lout = L.Lambda(lambda t: t * 2.0, name="double")(lin)
keras.Model(lin, L.Dense(2, name="dense")(lout), name="lam").save(
    os.path.join(folder, "keras2_lambda_savedmodel"), save_format="tf"
)
