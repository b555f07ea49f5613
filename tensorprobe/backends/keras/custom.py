"""--custom-objects FILE.py: import the user's module and collect what a model file may name.

Importing a module runs its code, like `python FILE.py` would: this is the user's own choice.
"""

import importlib.util
import inspect
import sys
from pathlib import Path

from tensorprobe import errors
from tensorprobe.errors import ModelLoadError, TensorprobeError
from tensorprobe.backends.keras.config import open_regular
from tensorprobe.text import first_line


def load_custom_objects(paths):
    """{name: object} for the Layer/Model subclasses, other classes and functions defined in
    each module (not those it imports). Keras' own registration
    (`@keras.saving.register_keras_serializable`) also takes effect on import."""
    found = {}
    for path in paths:
        module = _import(Path(path))
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found[name] = obj
    return found


def _import(path):
    name = f"tensorprobe_custom_{path.stem}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    try:
        # a FIFO or a device would block the import forever
        open_regular(path, f"{errors.name('custom_objects')} takes a Python file").close()
    except TensorprobeError as e:
        raise type(e)(f"{errors.name('custom_objects')} {e}", argument="custom_objects") from None
    given = f"{errors.name('custom_objects')} '{path}'"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{given}: not a Python module", argument="custom_objects")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent)
    sys.path.insert(0, folder)  # so that it can import modules beside it
    limit = sys.getrecursionlimit()
    try:
        try:
            spec.loader.exec_module(module)
        finally:  # first, so that what follows has its stack back
            lowered = sys.getrecursionlimit() < limit
            if lowered:
                sys.setrecursionlimit(limit)
            if folder in sys.path:
                sys.path.remove(folder)
        if lowered:
            raise ModelLoadError(f"{given}: importing it lowered Python's recursion limit "
                                 f"(below {limit}), which loading a model needs", argument="custom_objects")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while it runs: an interruption, not its failure
        del sys.modules[name]
        raise
    except ModelLoadError:
        del sys.modules[name]
        raise
    except SystemExit as e:  # sys.exit() in the module would end tensorprobe, silently
        del sys.modules[name]
        raise ModelLoadError(f"{given}: importing it called sys.exit({e.code!r})", argument="custom_objects") from e
    except BaseException as e:  # the user's code failed: report it as theirs, in one line
        del sys.modules[name]
        raise ModelLoadError(
            f"{given}: importing it failed: {type(e).__name__}: {first_line(e)}", argument="custom_objects"
        ) from e
    return module
