"""Models are built once per test session, small, in a temporary folder."""

import fcntl
import importlib.util
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "tensorprobe"


@pytest.fixture(autouse=True)
def empty_working_folder(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh, empty working folder, so that none depends on the folder
    pytest was started from (a stray activations.h5 in the repository's top folder) or
    writes into it; and the folder must still be empty afterwards."""
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    yield
    assert sorted(p.name for p in folder.iterdir()) == [], "a test wrote into the working folder"


def _sample_builder():
    spec = importlib.util.spec_from_file_location("sample_build", ROOT / "sample_models" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """name -> path of every model and input the tests use."""
    import keras

    folder = tmp_path_factory.mktemp("zoo")
    _sample_builder().build(folder)
    L = keras.layers
    keras.utils.set_random_seed(2)

    seq = keras.Sequential(
        [keras.Input((6,)), L.Dense(5, activation="relu", name="d1"), L.Dense(3, name="d2")], name="seq"
    )
    seq.save(folder / "seq.keras")

    # Two levels of nesting, a Sequential innermost, and a name used at two depths.
    inner = keras.Sequential(
        [keras.Input((8,)), L.Dense(6, activation="tanh", name="dense_x"), L.Dense(8, name="inner_out")],
        name="inner",
    )
    mid_in = keras.Input((8,))
    m = L.Dense(8, activation="relu", name="dense_x")(mid_in)
    m = inner(m)
    m = L.Dense(4, name="post")(m)
    mid = keras.Model(mid_in, m, name="mid")
    deep_in = keras.Input((8,), name="x")
    keras.Model(deep_in, L.Dense(2, name="head")(mid(deep_in)), name="deep").save(folder / "deep.keras")

    # A layer called twice (shared weights) and a layer with several outputs.
    shared = L.Dense(3, name="shared")
    multi_in = keras.Input((5, 4), name="seq_in")
    out, h, c = L.LSTM(3, return_state=True, name="lstm")(multi_in)
    keras.Model(multi_in, L.Concatenate(name="cat")([out, h, c]), name="multi").save(folder / "multi.keras")
    x = keras.Input((4,), name="x")
    y = L.Add(name="add")([shared(x), shared(L.Dense(4, name="pre")(x))])
    keras.Model(x, y, name="shared_model").save(folder / "shared.keras")

    lam_in = keras.Input((4,))
    lam = L.Lambda(lambda t: t * 2.0, name="double")(lam_in)
    keras.Model(lam_in, L.Dense(2, name="dense")(lam), name="lam").save(folder / "lambda.keras")

    # A keras.applications model, nested the way transfer learning does it.
    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    base.trainable = False
    app_in = keras.Input((32, 32, 3), name="image")
    z = L.GlobalAveragePooling2D(name="gap")(base(app_in, training=False))
    keras.Model(app_in, L.Dense(3, name="predictions")(z), name="app").save(folder / "app.keras")

    _custom_models(folder, rng_seed=4)

    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "make_keras2_models.py"), str(folder)],
        check=True, capture_output=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
    )

    rng = np.random.default_rng(3)
    np.save(folder / "images7.npy", rng.uniform(0, 255, (7, 32, 32, 3)).astype("float32"))
    np.save(folder / "one_image.npy", rng.uniform(0, 255, (32, 32, 3)).astype("float32"))
    np.save(folder / "small16.npy", rng.normal(size=(5, 16, 16, 3)).astype("float32"))
    np.save(folder / "vec8.npy", rng.normal(size=(9, 8)).astype("float32"))
    np.save(folder / "vec6.npy", rng.normal(size=(5, 6)).astype("float32"))
    np.save(folder / "vec4.npy", rng.normal(size=(5, 4)).astype("float32"))
    np.save(folder / "seq54.npy", rng.normal(size=(3, 5, 4)).astype("float32"))
    return {p.name: p for p in folder.iterdir()}


CUSTOM = ROOT / "sample_models" / "custom_layers.py"


def custom_module():
    """tests/custom_layers.py under a name Keras cannot import by itself."""
    spec = importlib.util.spec_from_file_location("tp_unimportable_custom", CUSTOM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _custom_models(folder, rng_seed):
    import keras

    c = custom_module()
    L = keras.layers
    keras.utils.set_random_seed(rng_seed)
    sub = c.Subclassed(5, name="subclassed")
    sub(np.zeros((1, 6), "float32"))
    sub.save(folder / "subclassed.keras")

    x = keras.Input((6,), name="x")
    h = c.GraphBlock(3, name="graph_block")(x)
    d = c.DictBlock(name="dict_block")(h)
    out = L.Concatenate(name="cat")([d["sum"], d["prod"]])
    keras.Model(x, L.Dense(2, name="head")(out), name="custom_functional").save(folder / "custom_functional.keras")

    x = keras.Input((6,), name="x")
    y = L.Dense(8, name="pre")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Dropout(0.5, name="drop")(y)
    model = keras.Model(x, L.Dense(2, name="head")(y), name="modes")
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2, 8).astype("float32"))
    model.save(folder / "modes.keras")


@pytest.fixture(scope="session")
def keras_model():
    """Load a model file with Keras itself, for independent computations (cached)."""
    import keras

    cache = {}

    def load(path, safe_mode=True, custom=False):
        if path not in cache:
            objects = {k: v for k, v in vars(custom_module()).items() if isinstance(v, type)} if custom else None
            cache[path] = keras.saving.load_model(path, custom_objects=objects, compile=False,
                                                  safe_mode=safe_mode)
        return cache[path]

    return load


@pytest.fixture
def cli():
    """Run `tensorprobe ARGS...` in-process; stdout and stderr are kept apart."""
    from tensorprobe.cli import cli as command

    def invoke(*args, env=None, input=None):
        return CliRunner().invoke(command, [str(a) for a in args], env=env, input=input,
                                  catch_exceptions=True)

    return invoke


def error_line(result):
    """The one `error:` line a failed command printed, asserting there is nothing else."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def run_on_terminal(args, columns=80, stdout=True, timeout=120):
    """Run the installed `tensorprobe ARGS` with stderr (and stdout, unless `stdout` is False)
    on a pseudo-terminal `columns` wide, as a user's terminal is, whatever the test's own
    environment: TERM=xterm-256color, the width from the terminal (no COLUMNS), no colour
    overrides. Returns (exit status, the text the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    drop = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
            "TENSORPROBE_DEBUG", "TENSORPROBE_MODEL", "TENSORPROBE_SHARD")
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, "TERM": "xterm-256color"}
    p = subprocess.Popen([str(BIN), *map(str, args)], stdin=subprocess.DEVNULL,
                         stdout=slave if stdout else subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            assert ready, "no output for too long"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master)
    return p.wait(timeout=timeout), shown.decode(errors="replace")


def screen_lines(text):
    """The lines a terminal shows for `text` as received, without colours or cursor codes."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        parts = [part for part in line.split("\r") if part]  # a carriage return starts over
        lines.append(parts[-1] if parts else "")
    return lines
