"""Model loaders: a path in, a LoadedModel out.

`formats` reads what a file is and what its stored config says without TensorFlow;
`keras` loads Keras 3 and Keras 2 (tf_keras) files.
"""

from tensorprobe.models.keras import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
