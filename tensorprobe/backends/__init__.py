"""Model formats that are not a Keras model or a TensorFlow graph, each in its own package:
`tflite` (TFLite flatbuffers, run by TensorFlow's TFLite interpreter)."""
