"""One mistake, two askers: the CLI's error line names the option (`--layer`), the API's
exception the argument (`layers`), and the exception carries that argument (`e.argument`).
The core writes each message once, with errors.name / errors.words; nothing rewrites it."""

import threading

import numpy as np
import pytest

import tensorprobe
from tensorprobe import errors
from conftest import error_line


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A two-layer Sequential (6 -> d1 -> d2), a model with inputs `a` and `b`, their inputs
    and a label file."""
    import keras

    folder = tmp_path_factory.mktemp("words")
    L = keras.layers
    keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu", name="d1"), L.Dense(3, name="d2")],
                     name="seq").save(folder / "seq.keras")
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    two = keras.Model([a, b], L.Dense(2, name="mix")(L.Concatenate(name="cat")([a, b])), name="two")
    two.save(folder / "two.keras")
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.normal(size=(4, 6)).astype("float32"))
    np.save(folder / "a.npy", rng.normal(size=(4, 3)).astype("float32"))
    np.save(folder / "labels.npy", rng.normal(size=(4, 3)).astype("float32"))
    # how the model's inputs are described, from Keras itself
    inputs = ", ".join(f"{t.name} {tuple(t.shape)} {t.dtype}" for t in two.inputs)
    return {"folder": folder, "seq": folder / "seq.keras", "two": folder / "two.keras", "x": folder / "x.npy",
            "a": folder / "a.npy", "labels": folder / "labels.npy", "two_inputs": inputs}


def api_error(call, kind):
    with pytest.raises(kind) as caught:
        call()
    return caught.value


def test_unknown_layer(models, cli, tmp_path):
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", models["seq"], models["x"], "--layer", "nope", "-o", out)
    assert result.exit_code == errors.USAGE
    said = "'nope': no such layer (`tensorprobe layers MODEL` lists them)"
    assert error_line(result) == f"error: --layer {said}"
    e = api_error(lambda: tensorprobe.dump(models["seq"], models["x"], out, layers="nope"), errors.UnknownLayerError)
    assert (str(e), e.argument) == (f"layers {said}", "layers")
    assert not out.exists()


def test_bad_target(models, cli, tmp_path):
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", models["seq"], models["x"], "--all", "--gradients", "--target", "foo", "-o", out)
    assert result.exit_code == errors.USAGE
    said = "'foo': expected class:K, top, sum or loss:NAME"
    assert error_line(result) == f"error: --target {said}"
    # the API takes the target itself as `gradients`
    e = api_error(lambda: tensorprobe.dump(models["seq"], models["x"], out, all_layers=True, gradients="foo"),
                  errors.UsageError)
    assert (str(e), e.argument) == (f"gradients {said}", "gradients")
    e = api_error(lambda: tensorprobe.activations(models["seq"], models["x"], all_layers=True, gradients="foo"),
                  errors.UsageError)
    assert (str(e), e.argument) == (f"gradients {said}", "gradients")


def test_existing_output(models, cli, tmp_path):
    out = tmp_path / "taken.h5"
    out.write_bytes(b"mine")
    result = cli("dump", "-m", models["seq"], models["x"], "--layer", "d1", "-o", out)
    assert result.exit_code == errors.USAGE
    assert error_line(result) == f"error: --output '{out}' exists; pass --overwrite to replace it"
    e = api_error(lambda: tensorprobe.dump(models["seq"], models["x"], out, layers="d1"), errors.OutputExistsError)
    assert (str(e), e.argument) == (f"output '{out}' exists; pass overwrite to replace it", "output")
    # compare's --save-a: the output at fault is named, in each asker's words
    result = cli("compare", models["seq"], models["seq"], models["x"], "--save-a", out)
    assert error_line(result) == f"error: --save-a '{out}' exists; pass --overwrite to replace it"
    e = api_error(lambda: tensorprobe.compare(models["seq"], models["seq"], models["x"], save_a=out),
                  errors.OutputExistsError)
    assert (str(e), e.argument) == (f"save_a '{out}' exists; pass overwrite to replace it", "save_a")
    assert out.read_bytes() == b"mine"


def test_bad_max_bytes(models, cli, tmp_path):
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", models["seq"], models["x"], "--layer", "d1", "--max-bytes", "lots", "-o", out)
    assert result.exit_code == errors.USAGE
    said = "'lots': expected a size such as 500M or 2G"
    assert error_line(result) == f"error: --max-bytes {said}"
    e = api_error(lambda: tensorprobe.dump(models["seq"], models["x"], out, layers="d1", max_bytes="lots"),
                  errors.UsageError)
    assert (str(e), e.argument) == (f"max_bytes {said}", "max_bytes")
    assert not out.exists()


def test_labels_with_skip_bad(models, cli, tmp_path):
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", models["seq"], models["x"], "--all", "--gradients", "--target", "loss:mse",
                 "--labels", models["labels"], "--skip-bad", "-o", out)
    assert result.exit_code == errors.USAGE
    assert error_line(result) == "error: --labels cannot be combined with --skip-bad: the rows would no longer match"
    e = api_error(lambda: tensorprobe.dump(models["seq"], models["x"], out, all_layers=True, gradients="loss:mse",
                                           labels=models["labels"], skip_bad=True), errors.UsageError)
    assert (str(e), e.argument) == ("labels cannot be combined with skip_bad: the rows would no longer match",
                                    "labels")


def test_bad_input_name(models, cli, tmp_path):
    out = tmp_path / "out.h5"
    result = cli("dump", "-m", models["two"], "--input", f"zz={models['a']}", "--layer", "mix", "-o", out)
    assert result.exit_code == errors.USAGE
    said = f"the model has no input 'zz'; its inputs are {models['two_inputs']}"
    assert error_line(result) == f"error: --input 'zz=...': {said}"
    e = api_error(lambda: tensorprobe.dump(models["two"], {"zz": models["a"]}, out, layers="mix"), errors.UsageError)
    assert (str(e), e.argument) == (f"x['zz']: {said}", "x")
    # an input left out
    result = cli("dump", "-m", models["two"], "--input", f"a={models['a']}", "--layer", "mix", "-o", out)
    said = f"nothing given for 'b'; the model's inputs are {models['two_inputs']}"
    assert error_line(result) == f"error: --input: {said}"
    e = api_error(lambda: tensorprobe.dump(models["two"], {"a": models["a"]}, out, layers="mix"), errors.UsageError)
    assert (str(e), e.argument) == (f"x: {said}", "x")
    assert not out.exists()


def test_the_core_speaks_by_construction():
    """No rewriting on the way out: a core function called directly speaks the API's words,
    and the CLI's inside errors.cli_words, in any thread (the reader and writer threads of a
    dump raise too)."""
    from tensorprobe import shard
    from tensorprobe.probe import parse_compression
    from tensorprobe.text import regex

    def said():
        with pytest.raises(errors.UsageError) as caught:
            parse_compression("zip")
        return str(caught.value), caught.value.argument

    assert said() == ("compression 'zip': expected gzip[:LEVEL 0-9], lzf or none", "compression")
    seen = []
    with errors.cli_words():
        assert said() == ("--compression 'zip': expected gzip[:LEVEL 0-9], lzf or none", "compression")
        worker = threading.Thread(target=lambda: seen.append(said()))
        worker.start()
        worker.join()
        assert errors.name("tensor_match") == "--tensor-match" and errors.name("node_data") == "--node-data"
        # a name that is no argument's is itself
        assert errors.name("TENSORPROBE_SHARD") == "TENSORPROBE_SHARD" and errors.name("--filter") == "--filter"
        with pytest.raises(errors.UsageError, match=r"^--tensor-match '\(': not a valid regular expression") as caught:
            regex("(", "tensor_match")
        assert caught.value.argument == "tensor_match"
        # an environment variable is named as it is, and is no argument
        with pytest.raises(errors.UsageError) as caught:
            shard.parse("9", shard.ENV)
        assert (str(caught.value), caught.value.argument) == (
            "TENSORPROBE_SHARD '9': expected K/N, shard K (from 0) of N, such as 0/4", None)
    assert seen == [("--compression 'zip': expected gzip[:LEVEL 0-9], lzf or none", "compression")]
    assert said()[0].startswith("compression ")
