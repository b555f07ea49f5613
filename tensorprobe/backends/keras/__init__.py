"""A Keras model (Keras 3 or tf_keras) walked as one graph of layers: graph.py."""
