"""How each kind of model computes: `keras` (the walk over a Keras model's graph of layers,
nested models and custom layers included), `tfgraph` (a frozen TensorFlow graph: SavedModel
signatures, traced Keras models, TF 1 frozen graphs; its tensors and the layers found in its
name scopes), `tflite` (TFLite flatbuffers, run by TensorFlow's TFLite interpreter). Loading
a file is `tensorprobe.models`' work; each loaded model says which of these runs it."""
