"""Whether a file is an ONNX model (a ModelProto), from its first bytes, without `onnx`.

A ModelProto is written in field-number order (the C++ serialiser `onnx.save` and every
converter use does so): its IR version (field 1, a varint), then optional strings and
varints (producer name 2, producer version 3, domain 4, model version 5, doc string 6),
then the graph (7, a GraphProto), then the opset imports (8) and the rest. So a file is
taken as ONNX when it starts with an IR version the runtimes know (3 and up: the first with
opset imports; onnxruntime reads no older file), its following fields are ModelProto fields
of the right wire type in increasing order, and the graph comes before the head ends, its
own first field a GraphProto field. None of TensorFlow's protobufs starts this way: a
GraphDef starts with a node (field 1, length-delimited: byte 0x0a), a SavedModel with its
schema version 0 or 1 (see tfgraph/protobuf.py).
"""

from tensorprobe.backends.tfgraph.protobuf import _varint

VARINT, LENGTH = 0, 2
IR_VERSIONS = range(3, 64)  # 3: ONNX 1.0 with opset imports; 10 and 11 are today's
MODEL_FIELDS = {1: VARINT, 2: LENGTH, 3: LENGTH, 4: LENGTH, 5: VARINT, 6: LENGTH, 7: LENGTH, 8: LENGTH,
                14: LENGTH, 20: LENGTH, 25: LENGTH, 26: LENGTH}
GRAPH = 7
# GraphProto: node 1, name 2, initializer 5, doc_string 10, input 11, output 12, value_info 13,
# quantization_annotation 14, sparse_initializer 15, metadata_props 16; all length-delimited
GRAPH_FIELDS = {1, 2, 5, 10, 11, 12, 13, 14, 15, 16}


def is_model_proto(head):
    """True when `head` (a file's first bytes) begins an ONNX ModelProto."""
    if head[:1] != b"\x08":
        return False
    version, i = _varint(head, 1)
    if version not in IR_VERSIONS:
        return False
    last = 1
    while i < len(head):
        tag, i = _varint(head, i)
        if tag is None:
            return False
        number, wire = tag >> 3, tag & 7
        if MODEL_FIELDS.get(number) != wire or number < last:
            return False
        last = number
        if wire == VARINT:
            value, i = _varint(head, i)
            if value is None:
                return False
            continue
        size, i = _varint(head, i)
        if size is None:
            return False
        if number == GRAPH:
            inner, _ = _varint(head, i)  # the graph's first tag
            return size > 0 and inner is not None and inner & 7 == LENGTH and inner >> 3 in GRAPH_FIELDS
        i += size
    return False
