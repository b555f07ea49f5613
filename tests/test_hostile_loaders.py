"""Hostile model files and custom-objects files, crafted here: stored code refused in every
field Keras or tf_keras loads as code, messages that say what failed (and never let a file
choose a package to install), decompression bombs, deep JSON, special files, and a
--custom-objects file that exits, raises a BaseException or lowers the recursion limit.

A payload of stored code writes a marker file when it runs: a refused load must leave no
marker, and --unsafe (the user's "I trust it") must run it, which proves the payload real."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import h5py
import pytest

from conftest import BIN, error_line

# tf_keras in a subprocess (TF_USE_LEGACY_KERAS=1), as tests/make_keras2_models.py does.
KERAS2_BUILDER = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
folder = sys.argv[1]
sys.path.insert(0, folder)
import tf_keras as keras
from helpers import twice

L = keras.layers


def marker(name):
    return os.path.join(folder, name)


# tf_keras stores every Python function as bytecode (function_type "lambda"); the attack names
# the user's own function instead, as a file edited by hand does: no code in `function`.
def name_the_function(config):
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            config["config"].update(function="twice", function_type="function", module="helpers")
        config = list(config.values())
    if isinstance(config, list):
        for value in config:
            name_the_function(value)


def edit_h5(path):
    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        name_the_function(config)
        f.attrs["model_config"] = json.dumps(config)


def edit_savedmodel(path):
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata()
    file = os.path.join(path, "keras_metadata.pb")
    with open(file, "rb") as f:
        meta.ParseFromString(f.read())
    for node in meta.nodes:
        config = json.loads(node.metadata)
        name_the_function(config)
        node.metadata = json.dumps(config)
    with open(file, "wb") as f:
        f.write(meta.SerializeToString())


# A Lambda whose function is the user's named function (no code stored) and whose mask is
# marshalled bytecode: tf_keras calls the mask while it rebuilds the model.
def mask_model():
    x = keras.Input((4,), name="x")
    y = L.Lambda(twice, mask=lambda t, m=None, p=marker("mask_ran"): open(p, "w").close(), name="masked")(x)
    return keras.Model(x, L.Dense(2, name="head")(y), name="outer")


mask_model().save(os.path.join(folder, "mask.h5"))
edit_h5(os.path.join(folder, "mask.h5"))
mask_model().save(os.path.join(folder, "mask_savedmodel"), save_format="tf")
edit_savedmodel(os.path.join(folder, "mask_savedmodel"))

x = keras.Input((4,), name="x")
y = L.Lambda(twice, output_shape=lambda s, p=marker("shape_ran"): (open(p, "w").close(), s)[1], name="shaped")(x)
keras.Model(x, y, name="shape_model").save(os.path.join(folder, "output_shape.h5"))
edit_h5(os.path.join(folder, "output_shape.h5"))

# The masked Lambda two models deep.
inner = mask_model()
x = keras.Input((4,), name="x")
middle = keras.Model(x, inner(x), name="middle")
x = keras.Input((4,), name="x")
keras.Model(x, L.Dense(1, name="top")(middle(x)), name="nested").save(os.path.join(folder, "nested_mask.h5"))
edit_h5(os.path.join(folder, "nested_mask.h5"))
"""

HELPERS = "def twice(x):\n    return x * 2.0\n"


@pytest.fixture(scope="module")
def keras2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras2_hostile")
    (folder / "helpers.py").write_text(HELPERS)
    (folder / "build.py").write_text(KERAS2_BUILDER)
    subprocess.run([sys.executable, str(folder / "build.py"), str(folder)], check=True, capture_output=True,
                   env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    return folder


def stored_field(path, layer, field):
    """The value tf_keras stored for `field` of `layer`, from the file's own config."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])

    def find(node):
        if isinstance(node, dict):
            if isinstance(node.get("config"), dict) and node["config"].get("name") == layer:
                return node["config"]
            node = list(node.values())
        if isinstance(node, list):
            for value in node:
                found = find(value)
                if found is not None:
                    return found
        return None

    return find(config)[field]


@pytest.mark.parametrize("name, layer, field, marker", [
    ("mask.h5", "masked", "mask", "mask_ran"),
    ("nested_mask.h5", "masked", "mask", "mask_ran"),
    ("output_shape.h5", "shaped", "output_shape", "shape_ran"),
])
def test_keras2_code_in_any_lambda_field_is_refused(cli, keras2, name, layer, field, marker):
    path = keras2 / name
    assert stored_field(path, layer, "function_type") == "function"  # the check's old blind spot
    assert stored_field(path, layer, f"{field}_type") == "lambda"
    (keras2 / marker).unlink(missing_ok=True)
    r = cli("layers", path, "--custom-objects", keras2 / "helpers.py")
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: layer '{layer}' ({field}) holds Python code that loading would "
                             "run; pass --unsafe only if you trust this file")
    assert not (keras2 / marker).exists()


def test_keras2_mask_code_runs_only_with_unsafe(cli, keras2):
    (keras2 / "mask_ran").unlink(missing_ok=True)
    r = cli("layers", keras2 / "mask.h5", "--custom-objects", keras2 / "helpers.py", "--unsafe", "--json")
    assert r.exit_code == 0, r.stderr
    assert [d["path"] for d in json.loads(r.stdout)] == ["x", "masked", "head"]
    assert (keras2 / "mask_ran").exists()  # the stored bytecode is real: it ran when trusted


def test_keras2_savedmodel_metadata_mask_is_refused(cli, keras2):
    path = keras2 / "mask_savedmodel"
    (keras2 / "mask_ran").unlink(missing_ok=True)
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: layer 'masked' (mask) holds Python code that loading would run; "
                             "pass --unsafe only if you trust this file")
    assert not (keras2 / "mask_ran").exists()


# ---- Keras 3 .keras files, their config.json rewritten ---------------------------------------

def rewrite(source, target, edit=None, members=()):
    """A copy of the .keras archive `source` with its config edited by `edit` (config -> None)
    and `members` ((name, bytes, compression)) added."""
    with zipfile.ZipFile(source) as z:
        items = {n: z.read(n) for n in z.namelist()}
    if edit is not None:
        config = json.loads(items["config.json"])
        edit(config)
        items["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)
        for name, data, compression in members:
            z.writestr(name, data, compress_type=compression)
    return target


def layer_config(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


@pytest.fixture(scope="module")
def keras3(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("keras3_hostile")
    L = keras.layers
    x = keras.Input((4,), name="x")
    y = L.Lambda(keras.activations.relu, name="lam")(x)  # a named Keras function: no code stored
    keras.Model(x, L.Dense(3, name="head")(y), name="plain").save(folder / "plain.keras")
    return folder


def writes(marker):
    """A lambda that writes the file `marker` (no defaults: Keras 3 stores them as a list that
    its Lambda layer cannot load)."""
    return eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")


def keras3_code(marker):
    """Python code as Keras 3 serialises a lambda anywhere in a config; it writes `marker`."""
    from keras.src.utils.python_utils import func_dump

    return {"class_name": "__lambda__", "config": {"value": func_dump(writes(marker))}}


def test_keras3_code_in_any_field_is_refused(cli, keras3):
    marker = keras3 / "activation_ran"

    def edit(config):
        layer_config(config, "head")["config"]["activation"] = keras3_code(marker)
        layer_config(config, "lam")["config"]["mask"] = keras3_code(marker)

    path = rewrite(keras3 / "plain.keras", keras3 / "code.keras", edit)
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: layers 'lam' (mask), 'head' (activation) hold Python code that "
                             "loading would run; pass --unsafe only if you trust this file")
    assert not marker.exists()


def test_keras3_lambda_output_shape_code_runs_only_with_unsafe(cli, keras3):
    from keras.src.utils.python_utils import func_dump

    marker = keras3 / "shape_ran"

    def edit(config):
        code, defaults, closure = func_dump(writes(marker))
        layer_config(config, "lam")["config"]["output_shape"] = {
            "class_name": "__lambda__", "config": {"code": code, "defaults": defaults, "closure": closure}}

    path = rewrite(keras3 / "plain.keras", keras3 / "shape.keras", edit)
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: layer 'lam' (output_shape) holds Python code that loading would "
                             "run; pass --unsafe only if you trust this file")
    assert not marker.exists()
    r = cli("layers", path, "--unsafe", "--json")
    assert r.exit_code == 0, r.stderr
    assert [d["path"] for d in json.loads(r.stdout)] == ["x", "lam", "head"]
    assert marker.exists()  # Keras ran the stored output_shape while it rebuilt the model


# ---- what a failed load says ------------------------------------------------------------------

def unknown_class(module, class_name="Foo", layer_name="head"):
    def edit(config):
        layer = layer_config(config, "head")
        layer.update(module=module, class_name=class_name, registered_name=None)
        layer["config"]["name"] = layer_name

    return edit


def test_a_layer_name_cannot_choose_the_package_to_install(cli, keras3):
    lure = "deserialize class 'x' because its parent module totally_legit_helper cannot be imported"
    path = rewrite(keras3 / "plain.keras", keras3 / "lure.keras", unknown_class("my_layers", layer_name=lure))
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: the model needs the custom class or function 'Foo'; "
                             "pass --custom-objects FILE.py with its definition")


def test_missing_keras_family_package_is_named_from_the_fixed_list(cli, keras3):
    import importlib.util

    assert importlib.util.find_spec("keras_cv") is None  # not installed here
    path = rewrite(keras3 / "plain.keras", keras3 / "cv.keras", unknown_class("keras_cv.layers", "Foo' lure"))
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: the model uses classes from the package keras_cv, which is not "
                             "installed: install it (pip install keras-cv), or pass --custom-objects FILE.py "
                             "with the class")


@pytest.mark.parametrize("init, failure", [
    ("raise RuntimeError('keras_cv refuses to start')", "RuntimeError: keras_cv refuses to start"),
    ("import tp_no_such_dependency", "ModuleNotFoundError: No module named 'tp_no_such_dependency'"),
])
def test_a_failing_keras_family_import_is_reported_as_such(cli, keras3, tmp_path, monkeypatch, init, failure):
    (tmp_path / "keras_cv").mkdir()
    (tmp_path / "keras_cv" / "__init__.py").write_text(init + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = rewrite(keras3 / "plain.keras", keras3 / "cv_import.keras", unknown_class("keras_cv.layers"))
    try:
        r = cli("layers", path)
    finally:
        sys.modules.pop("keras_cv", None)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: the model names classes of the package keras_cv, so Keras imported it "
                             "(Keras imports the packages keras_hub, keras_cv, keras_nlp where a file names "
                             f"them), and the installed keras_cv failed to import: {failure}")


def test_an_installed_keras_family_package_without_the_module(cli, keras3, tmp_path, monkeypatch):
    (tmp_path / "keras_cv").mkdir()
    (tmp_path / "keras_cv" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = rewrite(keras3 / "plain.keras", keras3 / "cv_module.keras", unknown_class("keras_cv.layers"))
    try:
        r = cli("layers", path)
    finally:
        sys.modules.pop("keras_cv", None)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: the model uses the class 'Foo' from the module keras_cv.layers, "
                             "which the installed keras_cv does not have (the file may need another version of "
                             "keras_cv); or pass --custom-objects FILE.py with the class")


# ---- decompression bombs ----------------------------------------------------------------------

def padded_config(source, target, size):
    """`source` with its config.json padded by spaces (still valid JSON) to `size` bytes,
    deflated: it compresses about a thousand times."""
    with zipfile.ZipFile(source) as z:
        items = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(target, "w") as z:
        for name, data in items.items():
            if name == "config.json":
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w", force_zip64=True) as f:
                    f.write(data)
                    block = b" " * (1 << 20)
                    left = size - len(data)
                    while left > 0:
                        f.write(block[:left])
                        left -= len(block)
            else:
                z.writestr(name, data)
    return target


def test_a_compressed_config_bomb_is_refused_before_reading(cli, keras3, tmp_path):
    path = padded_config(keras3 / "plain.keras", tmp_path / "bomb.keras", 300 << 20)  # 300 MiB in ~300 KiB
    stored = zipfile.ZipFile(path).getinfo("config.json").compress_size
    assert stored * 100 < 300 << 20
    r = cli("layers", path)
    assert r.exit_code == 1
    line = error_line(r)
    assert line.startswith(f"error: {path}: its member 'config.json' would unpack to {300 << 20:,} bytes from "
                           f"{stored:,}, a ratio of {(300 << 20) / stored:,.0f}: ")
    assert line.endswith(": a decompression bomb or a damaged file. Past 268,435,456 bytes an archive may inflate "
                         "at most 200 times; set TENSORPROBE_MAX_UNPACKED or TENSORPROBE_MAX_INFLATE_RATIO to raise "
                         "that, for a file you trust")


def test_the_unpacked_limit_is_raised_by_the_environment(cli, keras3, tmp_path):
    path = padded_config(keras3 / "plain.keras", tmp_path / "padded.keras", 4 << 20)
    r = cli("layers", path, env={"TENSORPROBE_MAX_UNPACKED": "1M"})
    assert r.exit_code == 1 and f"would unpack to {4 << 20:,} bytes" in error_line(r)
    assert "Past 1,048,576 bytes an archive may inflate" in error_line(r)
    r = cli("layers", path, "--json", env={"TENSORPROBE_MAX_UNPACKED": "8M"})
    assert r.exit_code == 0, r.stderr
    assert [d["path"] for d in json.loads(r.stdout)] == ["x", "lam", "head"]
    r = cli("layers", path, env={"TENSORPROBE_MAX_UNPACKED": "lots"})
    assert r.exit_code == 2
    assert error_line(r) == "error: TENSORPROBE_MAX_UNPACKED 'lots': expected a size such as 500M or 2G"


def test_many_members_cannot_add_up_to_a_bomb(cli, keras3, tmp_path):
    zeros = bytes(900 << 10)  # each member below the limit, together far beyond 100x the archive
    members = [(f"assets/part{i}.bin", zeros, zipfile.ZIP_DEFLATED) for i in range(8)]
    path = rewrite(keras3 / "plain.keras", tmp_path / "parts.keras", members=members)
    assert os.path.getsize(path) * 100 < 8 * len(zeros)
    r = cli("layers", path, env={"TENSORPROBE_MAX_UNPACKED": "1M"})
    assert r.exit_code == 1
    with zipfile.ZipFile(path) as z:
        count, total = len(z.infolist()), sum(m.file_size for m in z.infolist())
    size = os.path.getsize(path)
    assert error_line(r).startswith(f"error: {path}: its {count} members together would unpack to "
                                    f"{total:,} bytes from {size:,}, a ratio of {total / size:,.0f}: a decompression bomb")


# ---- deep JSON --------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_config_is_one_error_line(cli, keras3, tmp_path):
    with zipfile.ZipFile(keras3 / "plain.keras") as z:
        items = {n: z.read(n) for n in z.namelist()}
    config = items["config.json"].decode()
    items["config.json"] = config.replace('"name": "head"', f'"name": "head", "deep": {DEEP}', 1).encode()
    assert len(items["config.json"]) > len(config)
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == f"error: {path}: the model's stored config is nested too deeply to read"

    h5 = tmp_path / "deep.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential"})[:-1] + f', "config": {DEEP}}}'
    r = cli("layers", h5)
    assert r.exit_code == 1
    assert error_line(r) == f"error: {h5}: the model's stored config is nested too deeply to read"


def test_deeply_nested_savedmodel_metadata_is_one_error_line(cli, keras2, tmp_path):
    import shutil

    from tf_keras.protobuf import saved_metadata_pb2

    path = tmp_path / "deep_savedmodel"
    shutil.copytree(keras2 / "mask_savedmodel", path)
    meta = saved_metadata_pb2.SavedMetadata()
    meta.ParseFromString((path / "keras_metadata.pb").read_bytes())
    meta.nodes[-1].metadata = DEEP
    (path / "keras_metadata.pb").write_bytes(meta.SerializeToString())
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == f"error: {path}: a config in keras_metadata.pb is nested too deeply to read"


# ---- --custom-objects files that end the process or break it -----------------------------------

@pytest.mark.parametrize("code, message", [
    ("class Stop(BaseException):\n    pass\n\nraise Stop('stop')\n", "importing it failed: Stop: stop"),
    ("import sys\nsys.exit(0)\n", "importing it called sys.exit(0)"),
    ("raise SystemExit('bye')\n", "importing it called sys.exit('bye')"),
    ("import sys\nsys.setrecursionlimit(60)\n",
     "importing it lowered Python's recursion limit (below {limit}), which loading a model needs"),
    ("import inspect, sys\nsys.setrecursionlimit(len(inspect.stack()) + 30)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
     "importing it failed: RecursionError: maximum recursion depth exceeded"),
])
def test_custom_objects_file_that_exits_or_breaks(cli, keras3, tmp_path, code, message):
    limit = sys.getrecursionlimit()
    (tmp_path / "hostile.py").write_text(code)
    r = cli("layers", keras3 / "plain.keras", "--custom-objects", tmp_path / "hostile.py")
    assert sys.getrecursionlimit() == limit
    assert r.exit_code == 1, r.stderr
    expected = f"error: --custom-objects '{tmp_path / 'hostile.py'}': {message.format(limit=limit)}"
    assert error_line(r).startswith(expected)


# ---- special files ------------------------------------------------------------------------------

def run_cli(*args):
    """The installed script, with a timeout: a special file must never make it wait."""
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_a_fifo_or_a_device_is_refused_before_reading(tmp_path, keras3):
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    r = run_cli("layers", fifo)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {fifo}: not a regular file (a named pipe); a model is a file or a SavedModel folder"
    r = run_cli("layers", "/dev/zero")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: /dev/zero: not a regular file (a character device); a model is a file or a SavedModel folder"
    r = run_cli("layers", keras3 / "plain.keras", "--custom-objects", fifo)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --custom-objects {fifo}: not a regular file (a named pipe); --custom-objects takes a Python file"


def test_the_api_refuses_a_fifo_too(tmp_path):
    import tensorprobe
    from tensorprobe.errors import UsageError

    fifo = tmp_path / "m.h5"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file \\(a named pipe\\)"):
        tensorprobe.load(fifo)


def test_stored_code_finds_every_field_in_a_deep_config():
    """Deeper than Python's stack: the walk is not recursive. The config as tf_keras' RNN cell
    wrappers store a lambda (dropout_fn), under a thousand levels of lists."""
    from tensorprobe.backends.keras.config import stored_code

    wrapper = {"class_name": "DropoutWrapper", "config": {"name": "cell", "dropout_fn": ["code", None, None],
                                                          "dropout_fn_type": "lambda"}}
    deep = wrapper
    for _ in range(5000):
        deep = [deep]
    assert stored_code({"class_name": "Functional", "config": {"name": "m", "layers": deep}}) == [("cell", "dropout_fn")]
    assert stored_code({"config": {"output_shape": [4], "output_shape_type": "raw"}}) == []


def test_keras_conventions_the_checks_rely_on():
    """Fails loudly when a Keras upgrade changes how it stores code or which packages it
    imports for a file: config.stored_code and loader.FILE_IMPORTED_PACKAGES follow them."""
    import inspect
    import warnings

    import keras
    from keras.src.saving import serialization_lib

    from tensorprobe.backends.keras.config import stored_code
    from tensorprobe.backends.keras.loader import FILE_IMPORTED_PACKAGES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that a lambda is unsafe to save
        anywhere = keras.saving.serialize_keras_object({"f": lambda t: t})
    layer = keras.layers.Lambda(lambda t: t, output_shape=lambda s: s, mask=lambda t, m: m, name="lam")
    assert stored_code({"class_name": "Lambda", "config": layer.get_config()}) == [
        ("lam", "function"), ("lam", "output_shape"), ("lam", "mask")]
    assert stored_code(anywhere) == [("?", "f")]
    source = inspect.getsource(serialization_lib._retrieve_class_or_fn)
    assert 'package in {"keras", ' + ", ".join(f'"{p}"' for p in FILE_IMPORTED_PACKAGES) + "}" in source
