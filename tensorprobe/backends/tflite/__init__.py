"""TFLite files: `graph` (the interpreter, every tensor and its quantization), `runner`
(batches in, chosen tensors out, dequantized), `layers` (Keras layers from the tensor names),
`quantization` (TFLite's affine quantization, in NumPy). `tensorprobe.models.tflite` loads a
file into them."""
