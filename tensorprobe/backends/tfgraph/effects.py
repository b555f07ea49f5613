"""Ops that act outside the computation: a graph is a program, and running one that writes,
reads or lists files, calls back into Python, prints, logs or talks to other processes does
more than compute tensors. Graph-format models holding such ops are refused unless --unsafe.

A **denylist**, not an allowlist: TensorFlow registers about 1,900 ops and real exports use
hundreds of them (and new ones with each release), so an allowlist would refuse working
models for no reason; whereas the ops that reach outside a computation form a few families,
each named below from TensorFlow's op registry (`tf.raw_ops`), and a test
(tests/test_hostile_graphs.py) reads the registry and fails when an op of these families
appears that the list does not classify. Not denied, on purpose: variables, lookup tables,
random numbers, TensorLists and other state that lives and dies inside the computation;
`Assert` (it fails the run, nothing more); ops that need a TPU or a cluster that a local run
does not have (they cannot run here). Printing (`tf.print`: `PrintV2`, and `Print`) is
denied with the rest: it writes to tensorprobe's own stdout, where `--json` data goes, or to
any file its `output_stream` names.

Checkpoint ops (`SaveV2`, `RestoreV2`, `MergeV2Checkpoints`, ...) are in every SavedModel:
its saver (the `saver_def`) saves and restores the variables with them. They are allowed in
the saver's own part of a SavedModel (the nodes its save and restore tensors depend on, and
the functions only those call), which TensorFlow's loader runs to restore the variables from
the folder's `variables/` checkpoint and tensorprobe never runs; anywhere else they are file
I/O like any other.

Keras models are programs too: tf_keras' op layers (TFOpLambda) call TensorFlow functions by
name, so a Keras model's traced forward pass is checked with the same list before it first
runs (`checker`, in probe.extraction_function and for a Keras model's tensor graph).
"""

from dataclasses import dataclass

from tensorprobe import errors
from tensorprobe.errors import UnsafeModelError

_FILES = """
    WriteFile ReadFile MatchingFiles FileSystemSetConfiguration ImmutableConst
    InitializeTableFromTextFile InitializeTableFromTextFileV2 LoadAndRemapMatrix GenerateVocabRemapping
    WholeFileReader WholeFileReaderV2 TextLineReader TextLineReaderV2 TFRecordReader TFRecordReaderV2
    FixedLengthRecordReader FixedLengthRecordReaderV2 LMDBReader RecordInput
    TFRecordDataset TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset FixedLengthRecordDatasetV2
    CSVDataset CSVDatasetV2 ExperimentalCSVDataset LMDBDataset ExperimentalLMDBDataset SqlDataset
    ExperimentalSqlDataset MatchingFilesDataset ExperimentalMatchingFilesDataset
    SaveDataset SaveDatasetV2 LoadDataset DistributedSave SnapshotDataset SnapshotDatasetV2
    SnapshotDatasetReader SnapshotNestedDatasetReader SnapshotChunkDataset ListSnapshotChunksDataset
    CacheDataset CacheDatasetV2 DatasetToTFRecord ExperimentalDatasetToTFRecord
    CalibrationStatisticsSaver DumpTensor DTensorRestoreV2
"""
_CHECKPOINT = "Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice MergeV2Checkpoints"
_PYTHON = "PyFunc PyFuncStateless EagerPyFunc"  # also what tf.data's from_generator runs
_OUTPUT = """
    Print PrintV2
    CreateSummaryFileWriter CreateSummaryDbWriter SummaryWriter WriteSummary WriteScalarSummary
    WriteHistogramSummary WriteImageSummary WriteAudioSummary WriteGraphSummary WriteRawProtoSummary
    FlushSummaryWriter CloseSummaryWriter ImportEvent StatsAggregatorSetSummaryWriter
    DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary DebugNumericSummaryV2
"""
_NETWORK = """
    Send Recv _Send _Recv _HostSend _HostRecv RemoteCall
    RpcServer RpcServerRegister RpcServerStart RpcClient RpcCall RpcCheckStatus RpcGetValue
    DataServiceDataset DataServiceDatasetV2 DataServiceDatasetV3 DataServiceDatasetV4
    RegisterDataset RegisterDatasetV2
    CollectiveAllToAllV2 CollectiveAllToAllV3 CollectiveAssignGroupV2 CollectiveBcastRecv
    CollectiveBcastRecvV2 CollectiveBcastSend CollectiveBcastSendV2 CollectiveGather CollectiveGatherV2
    CollectiveInitializeCommunicator CollectiveReduce CollectiveReduceScatterV2 CollectiveReduceV2
    CollectiveReduceV3
"""
CHECKPOINT = frozenset(_CHECKPOINT.split())
FAMILIES = {  # family -> op types
    "files": frozenset(_FILES.split()) | CHECKPOINT,
    "python": frozenset(_PYTHON.split()),
    "output": frozenset(_OUTPUT.split()),
    "network": frozenset(_NETWORK.split()),
}
EFFECTS = frozenset().union(*FAMILIES.values())
SHOWN = 5  # ops named in the error, then "..."


@dataclass(frozen=True)
class Effect:
    op: str  # its type: "WriteFile"
    node: str
    function: str | None = None  # the library function holding it; None in the graph itself

    def __str__(self):
        where = f"node {self.node}" + (f" in function {self.function}" if self.function else "")
        return f"{self.op} ({where})"


def find(graph_def, saver_def=None):
    """The effectful ops of `graph_def`, in its nodes and in every function of its library,
    in file order; checkpoint ops that only `saver_def`'s save and restore run are left out."""
    allowed_nodes, allowed_functions = _saver_only(graph_def, saver_def) if saver_def else (set(), set())
    found = []
    for node in graph_def.node:
        if node.op in EFFECTS and not (node.op in CHECKPOINT and node.name in allowed_nodes):
            found.append(Effect(node.op, node.name))
    for function in graph_def.library.function:
        name = function.signature.name
        for node in function.node_def:
            if node.op in EFFECTS and not (node.op in CHECKPOINT and name in allowed_functions):
                found.append(Effect(node.op, node.name, name))
    return found


def refuse(path, found):
    """Raise UnsafeModelError naming the effectful ops `found` in the model at `path`."""
    if found:
        listed = ", ".join(str(e) for e in found[:SHOWN]) + (f", ... ({len(found)} in all)" if len(found) > SHOWN else "")
        raise UnsafeModelError(f"{path}: the graph holds ops that act outside the computation: {listed}; "
                               f"pass {errors.name('unsafe')} only if you trust this file")


def checker(path, unsafe):
    """None with `unsafe`; else a function that refuses a traced concrete function (a Keras
    model's forward pass, before it first runs) whose graph or function library holds ops
    that act outside the computation: tf_keras' op layers can call any TensorFlow op."""
    if unsafe:
        return None
    return lambda function: refuse(path, find(function.graph.as_graph_def()))


def called_functions(node):
    """Names of the functions a NodeDef calls: its op type when that is a function's name
    (the caller checks), and every function-valued attribute (`f` of a PartitionedCall, a
    While's `cond` and `body`, an If's branches, a dataset's map function)."""
    names = [node.op]
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def _saver_only(graph_def, saver_def):
    """(node names, function names) that only the saver's save and restore reach: the nodes
    its save tensor and restore op depend on (data and control inputs) that no other node
    depends on, and the functions that only those nodes call, directly or not."""
    nodes = {node.name: node for node in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}

    def upstream(roots):
        seen, todo = set(), [r for r in roots if r in nodes]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(n for n in (node_of(i) for i in nodes[name].input) if n in nodes)
        return seen

    def called(node_defs):
        seen, todo = set(), [f for node in node_defs for f in called_functions(node) if f in functions]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(f for node in functions[name].node_def for f in called_functions(node) if f in functions)
        return seen

    saver = upstream([node_of(saver_def.save_tensor_name), node_of(saver_def.restore_op_name)])
    others = upstream([name for name in nodes if name not in saver])
    saver_nodes = saver - others
    saver_functions = called(nodes[n] for n in saver_nodes)
    other_functions = called([nodes[n] for n in others] + [
        node for name in functions if name not in saver_functions for node in functions[name].node_def])
    other_functions |= set(functions) - saver_functions
    return saver_nodes, saver_functions - other_functions


def node_of(tensor_name):
    """The node a NodeDef input or a tensor name refers to: `^a`, `a:1`, `a` -> `a`."""
    return tensor_name.lstrip("^").split(":")[0]
