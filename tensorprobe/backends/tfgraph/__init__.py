"""A frozen TensorFlow graph: its tensors (tensors.py) and the Keras layers found again in its
name scopes (scopes.py)."""
