"""Write Keras 2 (tf_keras) .h5 files, as TF <= 2.15 wrote them. Run in a subprocess with
TF_USE_LEGACY_KERAS=1:  python make_keras2_models.py FOLDER

  keras2_transfer.h5   a VGG-style base, frozen, called on a new input inside a classifier
                       (Keras 3 cannot rebuild this file)
  keras2_lambda.h5     a model with a Lambda layer holding Python code
"""

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

folder = sys.argv[1]
keras.utils.set_random_seed(1)
L = keras.layers

inp = keras.Input((16, 16, 3))
x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inp)
x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv2")(x)
x = L.MaxPooling2D(2, name="block1_pool")(x)
x = L.Conv2D(6, 3, padding="same", activation="relu", name="block2_conv1")(x)
base = keras.Model(inp, x, name="vgg16")
base.trainable = False

outer_in = keras.Input((16, 16, 3), name="image")
y = base(outer_in, training=False)
y = L.GlobalAveragePooling2D(name="gap")(y)
y = L.Dense(8, activation="relu", name="fc1")(y)
y = L.BatchNormalization(name="bn")(y)
out = L.Dense(3, activation="softmax", name="predictions")(y)
model = keras.Model(outer_in, out, name="transfer")
bn = model.get_layer("bn")
rng = np.random.default_rng(1)
bn.moving_mean.assign(rng.normal(0, 0.5, 8).astype("float32"))
bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype("float32"))
model.save(os.path.join(folder, "keras2_transfer.h5"))

lin = keras.Input((4,))
lout = L.Lambda(lambda t: t * 2.0, name="double")(lin)
keras.Model(lin, L.Dense(2, name="dense")(lout)).save(os.path.join(folder, "keras2_lambda.h5"))

# tf.* calls and operators in a functional model: tf_keras records them as TFOpLambda and
# SlicingOpLambda layers (`tf.nn.relu`, `tf.__operators__.add`, ...).
import tensorflow as tf  # noqa: E402

tin = keras.Input((10,), name="x")
h = L.Dense(10, name="d1")(tin)
h = tf.nn.relu(h) + tin
left, right = h[:, :4], h[:, 4:]
h = tf.concat([tf.math.sigmoid(left) * 2.0, tf.reshape(right, (-1, 3, 2))[:, 0, :]], axis=-1)
keras.Model(tin, L.Dense(3, name="head")(h), name="tfop").save(os.path.join(folder, "keras2_tfop.h5"))
