"""The shape of the house, checked: no import circles, no format branch above `backends/`,
and every registered backend offers the registry's protocol. Read from the source with `ast`
(no TensorFlow)."""

import ast
import importlib
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tensorprobe"
BACKENDS = PACKAGE / "backends"


def _modules():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name, path, modules):
    """The tensorprobe modules `name` imports, at module level or inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycles(edges):
    """The strongly connected components of more than one module (Tarjan's, iterative)."""
    index, low, on, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def test_no_import_circles():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _backend_classes():
    """The names of the classes defined under backends/ (loaders, graphs, layers, tensors)."""
    names = set()
    for path in BACKENDS.rglob("*.py"):
        names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return names - {"Backend"}  # the interface itself is what everything above asks


# What asks "which format is this?": a Keras model's absence, a probe of a graph's or a
# loader's attributes, a class of a backend.
MODEL_ABSENT = re.compile(r"\.model\s+is\s+(not\s+)?None")
PROBED = re.compile(r"\b(graph|tensor_graph|layer_graph|loaded|backend|entry|model)\b")


def _format_branches(path, classes):
    source = path.read_text()
    found = [f"{path.name}:{source[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
             for m in MODEL_ABSENT.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        if node.func.id == "isinstance" and len(node.args) == 2:
            named = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.args[1])
                     if isinstance(n, (ast.Name, ast.Attribute))}
            if named & classes:
                found.append(f"{path.name}:{node.lineno}: isinstance(..., {', '.join(sorted(named & classes))})")
        if node.func.id in ("hasattr", "getattr") and PROBED.search(ast.unparse(node.args[0])):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_format_branch_outside_backends():
    classes = _backend_classes()
    found = []
    for path in PACKAGE.rglob("*.py"):
        if BACKENDS not in path.parents:
            found += _format_branches(path, classes)
    assert found == []


def test_the_branch_finder_finds_branches(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("if loaded.model is None:\n    pass\n"
                      "ok = isinstance(graph, scopes.ScopeGraph)\n"
                      "name = getattr(loaded, 'signature', None)\n"
                      "width = getattr(console, 'width', 80)\n")
    found = _format_branches(sample, _backend_classes())
    assert [line.split(":")[1] for line in found] == ["1", "3", "4"]


def test_every_registered_backend_offers_the_protocol():
    from tensorprobe.backends import detect

    for name in detect.REGISTRY:
        entry = importlib.import_module(name)
        assert isinstance(entry.DESCRIPTION, str) and entry.DESCRIPTION
        assert callable(entry.guess_can_open) and callable(entry.open)
