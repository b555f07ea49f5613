"""`dump --max-live-bytes SIZE` of an ONNX model: the tensors come back in chunks, one
onnxruntime session each, with the values onnx.reference.ReferenceEvaluator gives; other
formats refuse the option."""

import json

import h5py
import numpy as np
import pytest

import onnx  # the test extra installs onnx and onnxruntime: missing, they fail here, not skip
import onnxruntime  # noqa: F401
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import tensorprobe  # noqa: E402
from conftest import error_line  # noqa: E402

ROWS, WIDTH, BLOCKS = 5, 32, 6


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A chain of MatMul, Add, Relu blocks (18 tensors of WIDTH floats a sample)."""
    folder = tmp_path_factory.mktemp("chunks")
    rng = np.random.default_rng(4)
    nodes, weights, current = [], [], "x"
    for k in range(BLOCKS):
        weights += [numpy_helper.from_array(rng.normal(size=(WIDTH, WIDTH)).astype("float32") / 4, f"w{k}"),
                    numpy_helper.from_array(rng.normal(size=(WIDTH,)).astype("float32"), f"b{k}")]
        nodes += [helper.make_node("MatMul", [current, f"w{k}"], [f"/block{k}/mm"], name=f"/block{k}/MatMul"),
                  helper.make_node("Add", [f"/block{k}/mm", f"b{k}"], [f"/block{k}/add"], name=f"/block{k}/Add"),
                  helper.make_node("Relu", [f"/block{k}/add"], [f"/block{k}/relu"], name=f"/block{k}/Relu")]
        current = f"/block{k}/relu"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", WIDTH])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, folder / "mlp.onnx")
    x = rng.normal(size=(ROWS, WIDTH)).astype("float32")
    np.save(folder / "x.npy", x)
    names = [n.output[0] for n in nodes]
    reference = dict(zip(names, ReferenceEvaluator(model).run(names, {"x": x})))
    return folder / "mlp.onnx", folder / "x.npy", x, names, reference


@pytest.fixture
def sessions(monkeypatch):
    """The outputs of every onnxruntime session opened, in order."""
    from tensorprobe.backends.onnx import runner

    opened = []
    real = runner.Sessions._open

    def counting(self, names):
        opened.append(list(names))
        return real(self, names)

    monkeypatch.setattr(runner.Sessions, "_open", counting)
    return opened


def _values(path):
    found = {}
    with h5py.File(path, "r") as f:
        f["tensors"].visititems(lambda n, o: found.__setitem__(o.attrs["tensor"], o[()])
                                if isinstance(o, h5py.Dataset) else None)
    return found


def test_small_max_live_bytes_gives_more_sessions_and_the_same_values(mlp, sessions, cli, tmp_path):
    model, x_path, x, names, reference = mlp
    r = cli("dump", "-m", model, "--tensor-match", ".", "-o", tmp_path / "default.h5", x_path)
    assert r.exit_code == 0, r.stderr
    assert sessions == [names]  # every tensor from one session (the default is 1 GiB)
    sessions.clear()
    # three tensors of one batch: ROWS * WIDTH float32 each
    r = cli("dump", "-m", model, "--tensor-match", ".", "--max-live-bytes", str(3 * ROWS * WIDTH * 4),
            "-o", tmp_path / "small.h5", x_path)
    assert r.exit_code == 0, r.stderr
    assert sessions == [names[k:k + 3] for k in range(0, len(names), 3)]
    default, small = _values(tmp_path / "default.h5"), _values(tmp_path / "small.h5")
    assert sorted(small) == sorted(names) == sorted(default)
    for name in names:
        np.testing.assert_array_equal(small[name], default[name])
        np.testing.assert_allclose(small[name], reference[name], rtol=1e-5, atol=1e-6)


def test_api_takes_a_size_string(mlp, sessions, tmp_path):
    model, _, x, names, reference = mlp
    tensorprobe.dump(model, x, tmp_path / "api.h5", tensor_match="relu", max_live_bytes="1K")
    relus = [n for n in names if n.endswith("relu")]
    # 1 KiB holds one tensor of 5 x 32 float32 (640 bytes): one session each
    assert sessions == [[n] for n in relus]
    values = _values(tmp_path / "api.h5")
    for name in relus:
        np.testing.assert_allclose(values[name], reference[name], rtol=1e-5, atol=1e-6)


def test_layers_are_chunked_too(mlp, sessions, cli, tmp_path):
    model, x_path, _, _, _ = mlp
    r = cli("dump", "-m", model, "--all", "--max-live-bytes", "1", "--json", "-o", tmp_path / "l.h5", x_path)
    assert r.exit_code == 0, r.stderr
    assert len(sessions) == len(json.loads(r.stdout)["datasets"]) > 1 and all(len(s) == 1 for s in sessions)


@pytest.mark.parametrize("value, message", [
    ("lots", "error: --max-live-bytes 'lots': expected a size such as 500M or 2G"),
    ("0", "error: --max-live-bytes 0: expected a size of at least 1 byte"),
])
def test_bad_sizes_are_one_error_line(mlp, cli, tmp_path, value, message):
    model, x_path, _, _, _ = mlp
    r = cli("dump", "-m", model, "--tensor-match", ".", "--max-live-bytes", value, "-o", tmp_path / "o.h5", x_path)
    assert r.exit_code == 2
    assert error_line(r) == message


def test_formats_that_do_not_chunk_refuse_it(cli, tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.zeros((2, 4), "float32"))
    r = cli("dump", "-m", tmp_path / "m.keras", "--all", "--max-live-bytes", "1M", "-o", tmp_path / "k.h5",
            tmp_path / "x.npy")
    assert r.exit_code == 2
    assert error_line(r) == (f"error: --max-live-bytes bounds the tensors an ONNX model returns at once; "
                             f"{tmp_path / 'm.keras'} holds a Keras model, whose values are computed together")
