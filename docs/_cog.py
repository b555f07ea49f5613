"""Runs the commands the docs show, for cog: every output on a page is what the tool printed.

    python docs/_cog.py -r          regenerate every page and the README (`make docs`)
    python docs/_cog.py --check     fail when a shown output is no longer what the tool prints
                                    (`make docs-check`, tests/test_docs.py)
    python docs/_cog.py --check docs/errors.md      only those pages

A page holds blocks such as

    <!-- [[[cog tp.run("tensorprobe layers sample_models/transfer.h5") ]]] -->
    ...generated: the command after `$ `, then what it printed...
    <!-- [[[end]]] -->

(`tp` is this module; cog imports it once for all pages, so TensorFlow is imported once).

How a command runs:
- `tensorprobe ARGS` (with `VAR=value` before it, `cat FILE | ` before it, `| FILTER` after it or
  `; echo "exit status $?"` after it) runs in this process through click's CliRunner, which is
  what a user sees in a pipe: no colours, no progress bar, tables as wide as their content. Its
  stdout is shown first (through FILTER, run by bash, if any), then its stderr.
- Any other line runs in bash, with this Python first on PATH as `python` and `tensorprobe`;
  its stdout and stderr are shown as they come, in one stream.
- Every page runs in a fresh working folder of its own, WORK/pages/PAGE, that holds
  `sample_models` (a link to the repository's) and `models` (the files built once from them, see
  BUILDS), so paths read `sample_models/transfer.h5`, `activations.h5`, never a temporary path.
  WORK is $TENSORPROBE_DOCS_WORK, or tensorprobe-docs-UID in the temporary folder.
- Output that changes from run to run is masked: the `created` time of a dump is shown as
  `YYYY-MM-DDThh:mm:ss+00:00`, its `input_contents` (which hashes the input files' modification
  times, new in every clone) as `(hash of the inputs' sizes, times and bytes)`. Pages choose
  what they show so that nothing else changes.
- Trailing spaces are cut from every line (a terminal does not show them).
"""

import ast
import atexit
import contextlib
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent

# What the environment must not change in what the tool prints.
for _name in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES", "TENSORPROBE_MODEL", "TENSORPROBE_SHARD",
              "TENSORPROBE_DEBUG"):
    os.environ.pop(_name, None)
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


def work_folder():
    folder = os.environ.get("TENSORPROBE_DOCS_WORK") or Path(tempfile.gettempdir()) / f"tensorprobe-docs-{os.getuid()}"
    return Path(folder)


WORK = work_folder()

# The files some pages need, built once into WORK/models from the sample models (bash scripts, run
# in WORK, shown on the pages as they are). Each is rebuilt when its script, the files it reads
# or the TensorFlow version change; the builds the pages ask for start side by side when cog starts.
BUILDS = {
    "savedmodel": {
        "script": "python sample_models/build.py --savedmodel models/transfer_savedmodel",
        "reads": ["sample_models/build.py", "sample_models/transfer.keras"],
        "makes": ["models/transfer_savedmodel"],
    },
    "tflite": {
        "script": """python - <<'EOF'
import keras, numpy as np, tensorflow as tf
model = keras.saving.load_model("sample_models/transfer.keras")
samples = np.load("sample_models/input.npy")
open("models/transfer.tflite", "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([s[None]] for s in samples)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = converter.inference_output_type = tf.int8
open("models/transfer_int8.tflite", "wb").write(converter.convert())
EOF""",
        "reads": ["sample_models/transfer.keras", "sample_models/input.npy"],
        "makes": ["models/transfer.tflite", "models/transfer_int8.tflite"],
    },
    "mobilenet": {
        "script": """python -c 'import keras, tensorflow as tf
m = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=7)
open("models/mobilenet_v2.tflite", "wb").write(tf.lite.TFLiteConverter.from_keras_model(m).convert())'""",
        "reads": [],
        "makes": ["models/mobilenet_v2.tflite"],
    },
    "tfkeras": {
        "script": """python - <<'EOF'
import tensorflow as tf, tf_keras as keras
L = keras.layers
keras.utils.set_random_seed(0)
base = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D()], name="base")
image = keras.Input((32, 32, 3), name="image")
h = L.Dense(12, activation="relu", name="dense")(L.GlobalAveragePooling2D()(base(image)))
model = keras.Model(image, L.Dense(5, activation="softmax", name="dense_1")(h), name="model_1")
tf.saved_model.save(model, "models/tfkeras_savedmodel")
EOF""",
        "reads": [],
        "makes": ["models/tfkeras_savedmodel"],
    },
    "bert_export": {
        "script": """python - <<'EOF'
import keras, keras_hub
keras.utils.set_random_seed(3)
bert = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                                     intermediate_dim=16, max_sequence_length=8)
bert.export("models/bert_export", verbose=False)
EOF""",
        "reads": [],
        "makes": ["models/bert_export"],
    },
    "numerics": {
        "script": """python - <<'EOF'
import keras, numpy as np
L = keras.layers
keras.utils.set_random_seed(0)
x = keras.Input((4,), name="features")
h = L.Dense(6, name="dense")(x)
keras.Model(x, L.Dense(2, name="head")(keras.ops.log(h)), name="logs").save("models/logs.keras")
r = L.ReLU(name="relu")(L.Dense(6, name="dense")(x))
keras.Model(x, L.Dense(2, name="head")(keras.ops.sqrt(r)), name="roots").save("models/roots.keras")
rng = np.random.default_rng(0)
np.save("models/batch.npy", rng.normal(size=(8, 4)).astype("float32"))
np.save("models/labels.npy", rng.normal(size=(8, 2)).astype("float32"))
EOF""",
        "reads": [],
        "makes": ["models/logs.keras", "models/roots.keras", "models/batch.npy", "models/labels.npy"],
    },
    "frozen": {
        "script": """python - <<'EOF'
import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
graph = tf.Graph()
with graph.as_default():
    v1.set_random_seed(0)
    x = v1.placeholder(tf.float32, (None, 4), name="x")
    with v1.variable_scope("dense"):
        w = v1.get_variable("kernel", (4, 8))
        b = v1.get_variable("bias", (8,), initializer=v1.random_normal_initializer())
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w), b), name="Relu")
    with v1.variable_scope("dense_1"):
        w = v1.get_variable("kernel", (8, 3))
        logits = tf.matmul(h, w)
    tf.nn.softmax(logits, name="probs")
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["probs"])
        x_value = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
        np.save("models/x.npy", x_value)
        np.save("models/expected.npy", sess.run("dense/Relu:0", {"x:0": x_value}))
tf.io.write_graph(frozen, "models", "frozen.pb", as_text=False)
tf.io.write_graph(frozen, "models", "frozen.pbtxt", as_text=True)
EOF""",
        "reads": [],
        "makes": ["models/frozen.pb", "models/frozen.pbtxt", "models/x.npy", "models/expected.npy"],
    },
}

_state = {"page": None, "folder": None, "namespace": None}


def out(line=""):
    import cog

    cog.outl(line)


# -- the working folders -----------------------------------------------------------------------


def _link(folder):
    for name, target in (("sample_models", ROOT / "sample_models"), ("models", WORK / "models")):
        link = folder / name
        if link == target:
            continue
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)


def page_folder():
    """The current page's working folder, made fresh when cog starts a new page."""
    import cog

    page = str(Path(cog.inFile).resolve())
    if _state["page"] != page:
        name = re.sub(r"[^A-Za-z0-9]+", "_", os.path.relpath(page, ROOT)).strip("_")
        folder = WORK / "pages" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _link(folder)
        _state.update(page=page, folder=folder, namespace={})
    return _state["folder"]


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    return env


def _key(build):
    from importlib.metadata import version

    digest = hashlib.sha256(build["script"].encode())
    digest.update(f"tensorflow {version('tensorflow')} keras {version('keras')}".encode())
    for name in build["reads"]:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()


_started = {}  # name -> (the build's process, its log file, its key) while it runs; None once built


def _stamp(name):
    return WORK / "models" / f".{name}.built"


def start(*names):
    """Start building the files of BUILDS[name] in the background, unless they are built (and
    their key unchanged) or their build is under way: the builds are separate processes, so
    they run side by side and alongside the pages that need none of them; `need` waits."""
    (WORK / "models").mkdir(parents=True, exist_ok=True)
    _link(WORK)
    for name in names:
        if name in _started:
            continue
        build = BUILDS[name]
        key = _key(build)
        stamp = _stamp(name)
        if stamp.is_file() and stamp.read_text() == key and all((WORK / m).exists() for m in build["makes"]):
            _started[name] = None
            continue
        stamp.unlink(missing_ok=True)
        for made in build["makes"]:
            shutil.rmtree(WORK / made, ignore_errors=True)
            (WORK / made).unlink(missing_ok=True)
        log = open(WORK / "models" / f".{name}.log", "w+")  # not a pipe: nothing reads it until the end
        process = subprocess.Popen(["bash", "-c", build["script"]], cwd=WORK, env=_env(), stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        _started[name] = (process, log, key)


@atexit.register
def _stop():
    """Builds still running when cog stops (a page failed) are ended, not left to write into WORK."""
    for started in _started.values():
        if started is not None and started[0].poll() is None:
            started[0].kill()
            started[0].wait()


def need(*names):
    """Build (once, cached in WORK/models) the files of BUILDS[name], without showing anything."""
    start(*names)
    for name in names:
        if _started[name] is None:
            continue
        process, log, key = _started[name]
        status = process.wait()
        log.seek(0)
        printed = log.read()
        log.close()
        Path(log.name).unlink()
        if status != 0:
            raise RuntimeError(f"docs build {name!r} failed:\n{printed}")
        _stamp(name).write_text(key)
        _started[name] = None


def build(name):
    """Show the script that builds BUILDS[name], and build it (once)."""
    need(name)
    out("```")
    out("$ " + BUILDS[name]["script"])
    out("```")


# -- commands ----------------------------------------------------------------------------------

_IN_PROCESS = re.compile(
    r"^(?:cat (?P<stdin>\S+) \| )?(?P<env>(?:[A-Z_]+=\S+ )*)tensorprobe(?P<args>(?: .*?)?)"
    r"(?: \| (?P<filter>.+?))?(?P<status>; echo \"exit status \$\?\")?$"
)
_SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "<<"}
_CREATED = re.compile(r"(\bcreated\W+)\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00")
# input_contents hashes the input files' modification times, which a fresh clone sets anew
_INPUT_CONTENTS = re.compile(r"(\binput_contents\W+)[0-9a-f]{64}")


def _mask(text):
    text = _CREATED.sub(r"\1YYYY-MM-DDThh:mm:ss+00:00", text)
    return _INPUT_CONTENTS.sub(r"\1(hash of the inputs' sizes, times and bytes)", text)


def _lines(text):
    return [line.rstrip() for line in _mask(text).splitlines()]


def _in_process(match):
    args = shlex.split(match["args"])
    lexer = shlex.shlex(match["args"], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    if any(token in _SHELL_OPERATORS for token in lexer):
        return None
    env = dict(assignment.split("=", 1) for assignment in match["env"].split())
    return args, env


def _tensorprobe(args, env, stdin):
    from click.testing import CliRunner

    from tensorprobe.cli import cli

    clean = {name: None for name in ("TENSORPROBE_MODEL", "TENSORPROBE_SHARD", "TENSORPROBE_DEBUG")}
    result = CliRunner().invoke(cli, args, env={**clean, **env}, input=stdin, prog_name="tensorprobe",
                                catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise RuntimeError(f"tensorprobe {shlex.join(args)} crashed:\n"
                           + "".join(traceback.format_exception(result.exception)))
    return result.stdout, result.stderr, result.exit_code


def execute(line):
    """Run one command line in the page's folder: (lines printed, exit status)."""
    folder = page_folder()
    match = _IN_PROCESS.match(line)
    parsed = _in_process(match) if match else None
    if parsed is None:
        done = subprocess.run(["bash", "-c", line], cwd=folder, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        return _lines(done.stdout), done.returncode
    args, env = parsed
    with contextlib.chdir(folder):
        stdin = Path(match["stdin"]).read_bytes() if match["stdin"] else None
        stdout, stderr, status = _tensorprobe(args, env, stdin)
    if match["filter"] and shlex.split(match["filter"])[0] == "jq":
        stdout = _jq(shlex.split(match["filter"])[1:], stdout)
    elif match["filter"]:
        done = subprocess.run(["bash", "-c", match["filter"]], cwd=folder, env=_env(), input=stdout,
                              capture_output=True, text=True)
        stdout, status = done.stdout + done.stderr, done.returncode
    lines = _lines(stdout) + _lines(stderr)
    if match["status"]:
        lines.append(f"exit status {status}")
    return lines, status


def _jq(args, text):
    """`| jq [-c] [-r] PROGRAM` applied with the jq Python package (libjq itself, installed with
    the test extra), so the docs need no jq program on the machine; results printed as the jq
    command prints them: indented by 2, or one line each with -c, strings bare with -r."""
    import json

    import jq

    flags, program = set(args[:-1]), args[-1]
    lines = []
    for value in jq.compile(program).input_text(text):
        if "-r" in flags and isinstance(value, str):
            lines.append(value)
        elif "-c" in flags or "-r" in flags:
            lines.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        else:
            lines.append(json.dumps(value, indent=2, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def run(*lines):
    """A fenced block: each command after `$ `, then what it printed."""
    out("```")
    for line in lines:
        printed, _ = execute(line)
        out("$ " + line)
        for text in printed:
            out(text)
    out("```")


def setup(*lines):
    """Run commands a page needs without showing them; each must succeed."""
    for line in lines:
        printed, status = execute(line)
        if status != 0:
            raise RuntimeError(f"docs setup {line!r} failed (exit status {status}):\n" + "\n".join(printed))


def tree(package="tensorprobe"):
    """A table: every module of `package`, one row each, with the first sentence of its
    docstring (read with ast: nothing is imported)."""
    import ast

    root = ROOT / package
    out("| module | what it holds |")
    out("|---|---|")
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).parts):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0].rstrip(".:")
        first = first.replace("|", "\\|")
        out(f"| `{path.relative_to(ROOT).as_posix()}` | {first} |")


# -- Python sessions ---------------------------------------------------------------------------


def quiet_native_stderr():
    """TensorFlow's log lines, printed when the API first imports it, kept off the terminal."""
    from tensorprobe.console import quiet_native_stderr as quiet

    return quiet()


def session(source):
    """A Python session, as the interpreter shows it: each top-level statement after `>>> `
    (`... ` for its other lines), then what it printed or the value it returned; an exception
    as doctest shows one. The statements run in the page's folder, in one namespace per page."""
    folder = page_folder()
    namespace = _state["namespace"]
    source = source.strip("\n")
    lines = source.splitlines()
    out("```python")
    for node in ast.parse(source).body:
        statement = lines[node.lineno - 1:node.end_lineno]
        out(">>> " + statement[0])
        for text in statement[1:]:
            out("... " + text)
        code = "\n".join(statement) + "\n"
        buffer = io.StringIO()
        with contextlib.chdir(folder), contextlib.redirect_stdout(buffer), quiet_native_stderr():
            try:
                exec(compile(code, "<docs>", "single"), namespace)
            except Exception as e:  # shown as the user sees it
                kind = type(e)
                print("Traceback (most recent call last):\n  ...")
                print(f"{kind.__module__}.{kind.__qualname__}: {e}")
        for text in _lines(buffer.getvalue()):
            out(text)
    out("```")


def main(argv=None):
    """cog over the given pages (default: every page and the README), with this module as `tp`."""
    from cogapp import Cog

    argv = list(sys.argv[1:] if argv is None else argv)
    files = [a for a in argv if not a.startswith("-")]
    options = [a for a in argv if a.startswith("-")]
    if not files:
        files = [str(p) for p in sorted(DOCS.rglob("*.md"))] + [str(ROOT / "README.md")]
    # cog imports this file as `_cog` for the pages (`import _cog as tp`): the same module as this
    # one, so that the builds started here are the ones `need` waits for
    sys.modules.setdefault("_cog", sys.modules[__name__])
    wanted = set()
    for page in files:
        for call in re.findall(r"\btp\.(?:build|need)\(([^)]*)\)", Path(page).read_text()):
            wanted.update(name for name in re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", call) if name in BUILDS)
    start(*sorted(wanted))
    if "--check" in options:
        options += ["--diff", "--check-fail-msg", "run `make docs` and commit the pages it changes"]
    return Cog().main(["cog", *options, "-I", str(DOCS), "-p", "import _cog as tp", "--verbosity", "1", *files])


if __name__ == "__main__":
    sys.exit(main())
