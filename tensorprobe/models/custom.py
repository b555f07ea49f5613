"""--custom-objects FILE.py: import the user's module and collect what a model file may name.

Importing a module runs its code, like `python FILE.py` would: this is the user's own choice.
"""

import importlib.util
import inspect
import sys
from pathlib import Path

from tensorprobe.errors import ModelLoadError


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
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"--custom-objects '{path}': not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # so that it can import modules beside it
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code failed: report it as theirs, in one line
        del sys.modules[name]
        raise ModelLoadError(
            f"--custom-objects '{path}': importing it failed: {type(e).__name__}: {e}"
        ) from e
    finally:
        sys.path.remove(str(path.parent))
    return module
