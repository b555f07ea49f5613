"""What a protobuf file is (a GraphDef, binary or text, or a SavedModel proto), from its first
bytes, without TensorFlow."""

import re

# Protobuf files are recognised by how they begin, without TensorFlow (which has their
# schemas) and without reading a large file whole: a parse proves nothing anyway, since any
# bytes that happen to be well-formed parse as any message. Serialisers write fields in
# field-number order, so a binary GraphDef starts with its first NodeDef (field 1), whose
# own first fields are its name (1) and op type (2); a SavedModel starts with its schema
# version (field 1, a varint: 0 or 1), then its MetaGraphDefs (field 2). The text format
# starts with a field name, after blank and `#` comment lines. The loader parses the file.
PROTOBUF_HEAD = 1 << 16
GRAPH_DEF_FIELDS = {"node", "library", "versions", "version"}
SAVED_MODEL_FIELDS = {"saved_model_schema_version", "meta_graphs"}
TEXT_FIELD = re.compile(r"(?:\s|#[^\n]*\n)*([A-Za-z_]\w*)\s*[{:<]")
OP_TYPE = re.compile(rb"[A-Za-z0-9_>]+")


def protobuf_kind(head):
    """'frozen_graph' (binary GraphDef), 'frozen_graph_text' (text GraphDef), 'saved_model'
    (a SavedModel proto, binary or text) or None, from the first bytes of a file."""
    if head[:1] == b"\x0a":  # field 1 (node), length-delimited
        _, i = _varint(head, 1)
        if head[i:i + 1] == b"\x0a":  # NodeDef.name
            size, i = _varint(head, i + 1)
            name = head[i:i + size] if size else b""
            if name and len(name) == size and head[i + size:i + size + 1] == b"\x12":  # NodeDef.op
                size, i = _varint(head, i + size + 1)
                if size and OP_TYPE.fullmatch(head[i:i + size]):
                    return "frozen_graph"
    if head[:1] == b"\x08":  # field 1 (saved_model_schema_version), varint
        version, i = _varint(head, 1)
        if version in (0, 1) and head[i:i + 1] == b"\x12":  # a MetaGraphDef, its fields 1 or 2 first
            _, i = _varint(head, i + 1)
            if head[i:i + 1] in (b"\x0a", b"\x12"):
                return "saved_model"
    if b"\0" in head:
        return None
    m = TEXT_FIELD.match(head.decode("utf-8", "replace"))
    field = m.group(1) if m else None
    if field in GRAPH_DEF_FIELDS:
        return "frozen_graph_text"
    if field in SAVED_MODEL_FIELDS:
        return "saved_model"
    return None


def _varint(data, i):
    """(value, index after it) of the protobuf varint at data[i]; (None, len) when cut short."""
    value = shift = 0
    while i < len(data) and shift < 64:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return None, len(data)
