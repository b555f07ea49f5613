"""Custom layers and models for the README example and the tests, loaded by tensorprobe with
--custom-objects.

build.py and the test fixtures import this file under a module name that is not importable, so a saved
model that uses these classes cannot be loaded without --custom-objects."""

import keras
import tensorflow as tf


class PairBlock(keras.layers.Layer):
    """Calls two Dense sub-layers inside `call` and returns (y, x), as in the seed article."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner1 = keras.layers.Dense(units, activation="relu", name="inner1")
        self.inner2 = keras.layers.Dense(units, name="inner2")

    def build(self, input_shape):
        self.inner1.build(input_shape)
        self.inner2.build((*input_shape[:-1], self.units))

    def call(self, x):
        x1 = self.inner1(x)
        return self.inner2(x1), x1

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class GraphBlock(keras.layers.Layer):
    """A `call` compiled with tf.function: its inner values are symbolic inside it."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, name="dense")

    def build(self, input_shape):
        self.dense.build(input_shape)

    @tf.function
    def call(self, x):
        y = self.dense(x)
        if tf.reduce_sum(y) > 1e9:  # tensor-dependent Python control flow: needs AutoGraph
            y = y * 0.0
        return y * 2.0

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class DictBlock(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(2, name="proj")

    def build(self, input_shape):
        self.proj.build(input_shape)

    def call(self, x):
        p = self.proj(x)
        return {"sum": p + 1.0, "prod": p * 3.0}


class Subclassed(keras.Model):
    """A subclassed model with a nested custom block: no static graph of layers."""

    def __init__(self, units=5, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.block = PairBlock(units, name="block")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x):
        y, x1 = self.block(x)
        return self.head(y + x1)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class StatedBlock(keras.layers.Layer):
    """A block that states its output shape, as most hand-written layers do: Keras then never
    runs `call` on symbolic inputs, so its sub-layers run only on real values."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.proj = keras.layers.Dense(units, name="proj")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.norm.build((*input_shape[:-1], self.units))

    def call(self, x):
        return self.norm(keras.ops.gelu(self.proj(x))) * 0.5

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
