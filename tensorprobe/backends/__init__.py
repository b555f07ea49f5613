"""One folder per model format: `keras` (Keras 3 and tf_keras files, the walk over their
layers), `tfgraph` (SavedModel graphs and TF 1 frozen graphs: tensors, name-scope layers),
`tflite` (the TFLite interpreter). Each offers the interface of `base.py`; `detect.py` holds
the registry and picks the backend that opens a file, by its contents."""
