"""How values are written for people, once: shapes, dtypes, the line of an exception worth
showing, the "did you mean" suggestion of a name that does not exist; and how a REGEX option
is read."""

import difflib
import re

from tensorprobe import errors
from tensorprobe.errors import UsageError


def shape_text(shape, unknown="None"):
    """(None, 32, 32, 3); `unknown` stands for a dimension that is not known."""
    dims = [unknown if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def dtype_name(dtype):
    """'float32' for a NumPy, TensorFlow or Keras dtype (or a dtype's name)."""
    return getattr(dtype, "name", None) or str(dtype)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_LINES = {**_CONTROL, ord("\n"): "\n"}


def printable(value, keep_newlines=False):
    """`value` as text with every control character escaped (`\\x1b`, `\\n`, ...), so that a
    name or an attribute read from a file cannot move the cursor, colour the terminal or
    start a line of its own in a table or a message. Everything else, non-ASCII letters
    included, is shown as it is. `keep_newlines` keeps line breaks, for text whose lines are
    its own (JSON, where a control character in a value is already escaped)."""
    return str(value).translate(_LINES if keep_newlines else _CONTROL)


def first_line(exc):
    """An exception's message in one line of at most 300 characters, for error messages
    (Keras and h5py put what went wrong first)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def tf_error_line(exc):
    """The line of a TensorFlow run-time error that says what went wrong (not where): its
    last line that is not a graph location or a traceback."""
    noise = ("Graph execution error", "Detected at node", "File ", "[[", "Traceback")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(noise)] or lines or [type(exc).__name__]
    return useful[-1][:300]


def did_you_mean(name, candidates):
    """'; did you mean ...?' with the up to three `candidates` (paths or tensor names) closest
    to `name`, comparing it with each whole candidate and with the candidate's last
    components (as many as `name` has); '' when none is close."""
    depth = name.count("/") + 1

    def score(full):
        tail = "/".join(full.split("/")[-depth:])
        best = 0.0
        for candidate in (full, tail):
            matcher = difflib.SequenceMatcher(None, name, candidate)
            if matcher.quick_ratio() > max(best, 0.6):  # an upper bound: skip the slow ratio
                best = max(best, matcher.ratio())
        return best

    scored = sorted(((score(c), c) for c in candidates), key=lambda sc: -sc[0])
    close = [c for s, c in scored[:3] if s >= 0.6]
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def regex(pattern, argument):
    """`pattern` compiled (None stays None); a usage error about `argument` (an API argument
    name such as `match`, named by errors.name) if it is not a valid regular expression. Every
    REGEX option matches with `search`.

    Patterns are compiled by RE2 (google-re2), whose matching time is linear in the length
    of the text: a pattern such as `^(\\w+/?)+$`, which makes Python's backtracking `re`
    run for minutes on a long tensor name, answers at once. RE2 lacks back-references and
    look-around assertions; a pattern using them is refused with RE2's own reason."""
    if pattern is None:
        return None
    import re2  # about 2 ms; only commands that take a REGEX need it

    options = re2.Options()
    options.log_errors = False  # the reason goes into our one error line, not onto stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        reason = e.args[0] if e.args else e
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise UsageError(
            f"{errors.name(argument)} '{printable(pattern)}': not a valid regular expression ({reason}); "
            "RE2 is used, which has no back-references or look-around", argument=argument
        ) from e


def parse_size(text, argument="max_bytes"):
    """'1500', '500K', '2M', '1.5G', '3GiB' -> bytes (binary multiples); `argument`: the API
    argument (errors.name) or environment variable the error is about."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"{errors.name(argument)} '{text}': expected a size such as 500M or 2G", argument=argument)
    scale = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * scale)
