"""TFLite files: `graph` (the interpreter, every tensor and its quantization), `runner`
(batches in, chosen tensors out, dequantized), `layers` (Keras layers from the tensor names),
`quantization` (TFLite's affine quantization, in NumPy); the Backend (backend.py)."""

from tensorprobe.errors import ModelLoadError

DESCRIPTION = "a TensorFlow Lite .tflite file"
TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4..8 (after the root offset)


def guess_can_open(path, head):
    """'tflite' for a TFLite flatbuffer (its file identifier); None otherwise."""
    if head is None:
        return None
    if head[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    if path.suffix.lower() == ".tflite":
        raise ModelLoadError(f"{path}: not a TFLite model (no '{TFLITE_IDENTIFIER.decode()}' flatbuffer "
                             "identifier at bytes 4-8)")
    return None


def open(path, fmt, options):
    """No Python code in a TFLite file: `unsafe` and custom objects do not apply."""
    from tensorprobe.backends.tflite.backend import load_tflite

    options.refuse(path, signature=True, raw_quantized=True)
    return load_tflite(path, options.signature, options.raw_quantized)
