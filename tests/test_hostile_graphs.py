"""Hostile graph-format models (issue 29 items 2 and 9): graphs that write files or call
Python when run, in a frozen GraphDef (in its ops or in its function library) and in a
SavedModel (in the signature, and in a resource initializer that loading itself runs), are
refused without --unsafe and never act; a .pb cut between two ops is refused. Every graph is
built here with tf.function / tf.io.write_file or edited by hand; nothing is downloaded."""

import json
import re

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from conftest import error_line

REFUSAL = "; pass --unsafe only if you trust this file"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """name -> path: graphs that would write `target` (a file that must never appear), the
    ordinary exports that must not be refused, and an input."""
    folder = tmp_path_factory.mktemp("hostile")
    target = folder / "written_by_the_model.txt"
    spec = tf.TensorSpec((None, 3), tf.float32, name="x")

    @tf.function(input_signature=[spec])
    def writes(x):
        done = tf.io.write_file(str(target), "the model wrote this")
        with tf.control_dependencies([done]):
            return tf.identity(x * 2.0, name="out")

    graph_def = writes.get_concrete_function().graph.as_graph_def()
    (folder / "write.pb").write_bytes(graph_def.SerializeToString())

    @tf.function
    def inner(x):
        done = tf.io.write_file(str(target), "from a library function")
        with tf.control_dependencies([done]):
            return x + 1.0

    @tf.function(input_signature=[spec])
    def calls(x):
        return tf.identity(inner(x), name="out")

    library = calls.get_concrete_function().graph.as_graph_def()
    assert library.library.function, "the call must stay a call of a library function"
    (folder / "library.pb").write_bytes(library.SerializeToString())

    class Writes(tf.Module):
        @tf.function(input_signature=[spec])
        def __call__(self, x):
            return {"out": writes(x)}

    module = Writes()
    tf.saved_model.save(module, str(folder / "write_saved"), signatures=module.__call__)

    class Table(tf.Module):  # a lookup table read from a file when the SavedModel is loaded
        def __init__(self):
            vocab = folder / "vocab.txt"
            vocab.write_text("a\nb\n")
            init = tf.lookup.TextFileInitializer(str(vocab), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                                 tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
            self.table = tf.lookup.StaticHashTable(init, -1)

        @tf.function(input_signature=[spec])
        def __call__(self, x):
            return {"out": x * tf.cast(self.table.lookup(tf.constant("b")), tf.float32)}

    table = Table()
    tf.saved_model.save(table, str(folder / "table_saved"), signatures=table.__call__)

    keras.utils.set_random_seed(1)
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="image")
    h = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    convnet = keras.Model(inp, L.Dense(2, name="logits")(h), name="convnet")
    convnet.export(str(folder / "conv_export"), verbose=False)
    np.save(folder / "x.npy", np.arange(6, dtype="float32").reshape(2, 3))
    np.save(folder / "images.npy", np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32"))
    paths = {p.name: p for p in folder.iterdir()}
    return {**paths, "target": target, "graph_def": graph_def, "convnet": convnet}


def test_frozen_graph_writing_a_file_is_refused_and_writes_nothing(cli, hostile, tmp_path):
    r = cli("dump", "-m", hostile["write.pb"], "-t", "out", hostile["x.npy"], "-o", tmp_path / "a.h5")
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {hostile['write.pb']}: the graph holds ops that act outside the "
                             f"computation: WriteFile (node WriteFile){REFUSAL}")
    assert not hostile["target"].exists() and not (tmp_path / "a.h5").exists()


def test_frozen_graph_with_effects_is_still_listed(cli, hostile):
    r = cli("tensors", hostile["write.pb"], "--json")
    assert r.exit_code == 0, r.stderr
    assert "out:0" in {t["name"] for t in json.loads(r.stdout)}
    assert cli("layers", hostile["write.pb"]).exit_code == 0
    assert not hostile["target"].exists()


def test_write_file_in_a_library_function_is_refused(cli, hostile, tmp_path):
    r = cli("dump", "-m", hostile["library.pb"], "-t", "out", hostile["x.npy"], "-o", tmp_path / "a.h5")
    assert r.exit_code == 1
    function = next(f.signature.name for f in graph_pb2.GraphDef.FromString(
        hostile["library.pb"].read_bytes()).library.function)
    assert error_line(r) == (f"error: {hostile['library.pb']}: the graph holds ops that act outside the "
                             f"computation: WriteFile (node WriteFile in function {function}){REFUSAL}")
    assert not hostile["target"].exists()


def test_the_api_refuses_it_too(hostile):
    import tensorprobe
    from tensorprobe.errors import UnsafeModelError

    model = tensorprobe.load(hostile["write.pb"])
    with pytest.raises(UnsafeModelError, match=re.escape("WriteFile (node WriteFile)")):
        tensorprobe.activations(model, np.ones((2, 3), "float32"), tensors=["out"])
    assert not hostile["target"].exists()


def test_savedmodel_writing_a_file_is_refused_before_loading(cli, hostile, tmp_path):
    r = cli("dump", "-m", hostile["write_saved"], "-t", "out", hostile["x.npy"], "-o", tmp_path / "a.h5")
    assert r.exit_code == 1
    line = error_line(r)
    assert re.fullmatch(re.escape(f"error: {hostile['write_saved']}: the graph holds ops that act outside the "
                                  "computation: WriteFile (node WriteFile in function ") + r"__inference_\w+"
                        + re.escape(f"){REFUSAL}"), line), line
    assert not hostile["target"].exists()


def test_savedmodel_reading_a_file_when_loaded_is_refused(cli, hostile):
    # the table's initializer runs inside tf.saved_model.load, before any signature does
    r = cli("tensors", hostile["table_saved"])
    assert r.exit_code == 1
    assert "InitializeTableFromTextFileV2 (node " in error_line(r)


def test_unsafe_runs_it(cli, hostile, tmp_path):
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", hostile["write.pb"], "-t", "out", hostile["x.npy"], "-o", out, "--unsafe")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["tensors/out:0"][()], np.load(hostile["x.npy"]) * 2.0)
    assert hostile["target"].read_text() == "the model wrote this"
    hostile["target"].unlink()


def test_ordinary_exports_are_not_refused(cli, hostile, tmp_path):
    out = tmp_path / "conv.h5"
    r = cli("dump", "-m", hostile["conv_export"], "--all", hostile["images.npy"], "-o", out)
    assert r.exit_code == 0, r.stderr
    model, x = hostile["convnet"], np.load(hostile["images.npy"])
    with h5py.File(out, "r") as f:
        for name in ("conv", "bn", "gap", "logits"):
            expected = keras.Model(model.inputs, model.get_layer(name).output)(x)
            np.testing.assert_allclose(f[f"activations/{name}"][()], expected, rtol=1e-5, atol=1e-6)


def test_the_denylist_classifies_every_op_of_its_families():
    """A TensorFlow upgrade that adds an op of a denied family (a new file reader, a new
    summary writer) fails here until the op is classified."""
    from tensorprobe.backends.tfgraph import effects

    families = re.compile(r"File|Save|Restore|Checkpoint|PyFunc|Summary|Write|Print|Reader|Record|Rpc|"
                          r"Collective|Debug|Snapshot|Matching|Sql|LMDB|CSV|TextLine|Remote|DataService|"
                          r"Send|Recv|Dump|Load|Cache|Import|Host|Register")
    # matched by name, but they compute in memory: protos of summaries, TensorArray writes,
    # readers' methods (the readers that open files are denied), string formatting of
    # checkpoint names, a copy, CSV parsing, in-memory caches, a gradient's identity, TPU ops
    in_memory = set("""
        AudioSummary AudioSummaryV2 HistogramSummary ImageSummary MergeSummary ScalarSummary
        TensorSummary TensorSummaryV2 StatsAggregatorSummary ExperimentalStatsAggregatorSummary
        BoostedTreesMakeStatsSummary BoostedTreesExampleDebugOutputs
        TensorArrayWrite TensorArrayWriteV2 TensorArrayWriteV3 IdentityReader IdentityReaderV2
        ReaderNumRecordsProduced ReaderNumRecordsProducedV2 ReaderNumWorkUnitsCompleted
        ReaderNumWorkUnitsCompletedV2 ReaderRead ReaderReadUpTo ReaderReadUpToV2 ReaderReadV2 ReaderReset
        ReaderResetV2 ReaderRestoreState ReaderRestoreStateV2 ReaderSerializeState ReaderSerializeStateV2
        ShardedFilename ShardedFilespec Snapshot DecodeCSV AnonymousMemoryCache DeleteMemoryCache
        DummyMemoryCache DebugGradientIdentity DebugGradientRefIdentity LookupTableImport LookupTableImportV2
        CopyHost CollectivePermute RecvTPUEmbeddingActivations SendTPUEmbeddingGradients
    """.split())
    registered = {name for name in dir(tf.raw_ops) if not name.startswith("_")}
    unclassified = sorted(n for n in registered if families.search(n) and n not in effects.EFFECTS
                          and n not in in_memory and not n.startswith("LoadTPUEmbedding"))
    assert unclassified == []
    for name in ("WriteFile", "ReadFile", "MatchingFiles", "SaveV2", "RestoreV2", "MergeV2Checkpoints",
                 "PyFunc", "EagerPyFunc", "PyFuncStateless", "PrintV2", "CreateSummaryFileWriter"):
        assert name in effects.EFFECTS


# ---- item 9: a GraphDef carries no length -----------------------------------------------

def _graph_file(tmp_path, graph_def, name):
    path = tmp_path / name
    path.write_bytes(graph_def.SerializeToString())
    return path


def test_graph_cut_between_two_ops_is_refused(cli, hostile, tmp_path):
    """A GraphDef carries no length: without some of its ops it still parses. What can be
    seen is an op that reads one the file no longer holds (here `mul`, taken out by hand)."""
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(hostile["graph_def"])
    names = [n.name for n in graph_def.node]
    reader = next(n for n in graph_def.node if any(i.split(":")[0] == "mul" for i in n.input))
    del graph_def.node[names.index("mul")]
    path = _graph_file(tmp_path, graph_def, "cut.pb")
    r = cli("tensors", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: node '{reader.name}' reads 'mul', which the graph does not hold: "
                             "the file is incomplete or damaged")


def test_graph_whose_library_is_lost_is_refused(cli, hostile, tmp_path):
    graph_def = graph_pb2.GraphDef.FromString(hostile["library.pb"].read_bytes())
    caller = next(n for n in graph_def.node if n.op in ("PartitionedCall", "StatefulPartitionedCall"))
    function = caller.attr["f"].func.name
    graph_def.ClearField("library")  # the library is written after the ops: a cut loses it first
    path = _graph_file(tmp_path, graph_def, "no_library.pb")
    r = cli("layers", path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: node '{caller.name}' calls function '{function}', which the "
                             "graph's library does not hold: the file is incomplete or damaged")
