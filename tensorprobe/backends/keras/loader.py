"""Load Keras 3 files with Keras 3, and Keras 2 `.h5` files that Keras 3 cannot rebuild with tf_keras."""

import re

from tensorprobe import errors
from tensorprobe.backends import base
from tensorprobe.backends.keras import config
from tensorprobe.backends.keras.backend import KerasBackend
from tensorprobe.errors import ModelLoadError
from tensorprobe.text import first_line


# Keras 3 imports the module a file names for a class when that module lies in one of these
# packages (keras.saving's `_retrieve_class_or_fn`): an installed keras_hub, keras_cv or
# keras_nlp runs its import code when a file names it, safe mode or not.
FILE_IMPORTED_PACKAGES = ("keras_hub", "keras_cv", "keras_nlp")
# The only packages a message suggests installing, by their import names: those Keras imports
# for a file, and tf_keras, which reads Keras 2 files.
PIP_NAMES = {"keras_hub": "keras-hub", "keras_cv": "keras-cv", "keras_nlp": "keras-nlp", "tf_keras": "tf-keras"}


def load_model(path, fmt, unsafe=False, custom_objects=None):
    """Load a Keras model file. Stored Python code (Lambda layers) is refused unless `unsafe`.

    `custom_objects` ({name: class or function}) are the user's classes the file refers to.
    Keras imports the Keras-family packages (keras_hub, keras_cv, keras_nlp) that a file
    names as the modules of its classes, so loading a file runs the import code of those
    packages where they are installed, with or without `unsafe`.
    """
    custom_objects = custom_objects or {}
    path = str(path)
    stored, written_by = config.read_config(path, fmt)
    if not unsafe:
        # tf_keras' .h5 loader has no safe mode, so the check is ours, for every format alike.
        config.refuse_code(path, stored)
        config.refuse_op_layers(path, stored)
    sha = base.file_sha256(path)

    import keras

    from tensorprobe.backends.keras.graph import generated_names

    try:
        with generated_names(keras):
            model = keras.saving.load_model(
                path, custom_objects=custom_objects, compile=False, safe_mode=not unsafe
            )
        return KerasBackend(path, model, keras, f"keras {keras.__version__}", fmt, sha)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # any failure to rebuild the file (or of the user's classes) is reported below
        keras3_error = e
    if fmt == "h5" and not written_by.startswith("3"):
        try:
            import tf_keras
        except ImportError as e:
            raise ModelLoadError(f"{path}: a Keras 2 file that Keras 3 cannot load ({first_line(keras3_error)}), "
                                 f"and tf_keras is not installed: install it (pip install {PIP_NAMES['tf_keras']})") from e
        try:
            with generated_names(tf_keras):
                model = tf_keras.models.load_model(path, custom_objects=custom_objects, compile=False)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            raise _load_error(path, "cannot load this Keras 2 model", e) from e
        return KerasBackend(path, model, tf_keras, f"tf_keras {tf_keras.__version__}", fmt, sha)
    raise _load_error(path, "cannot load the model", keras3_error) from keras3_error


DESERIALIZE_FROM_MODULE = re.compile(r"Could not deserialize class '([\w.]+)' because its parent module [\w.]+ cannot")
MISSING_OBJECT = re.compile(r"(?:Could not locate|Unknown) (?:class|layer|function|object)[^'`]*['`]([\w.>]+)['`]")


def _load_error(path, what, exc):
    """A ModelLoadError saying what failed: an import of a package the file names, a package
    that is not installed (with the pip command, only ever for one of PIP_NAMES), a custom
    class or function not supplied (with the option that supplies it). Names are read from
    the exceptions Python and Keras raised, each message only from its start: Keras' messages
    end with the stored config, whose text is the file's to choose."""
    chain = _exception_chain(exc)
    failed = _failed_import(chain)
    if failed is not None:
        module, error = failed
        return ModelLoadError(
            f"{path}: the model names classes of the package {module.split('.')[0]}, so Keras imported "
            f"it (Keras imports the packages {', '.join(FILE_IMPORTED_PACKAGES)} where a file names them), "
            f"and the installed {module} failed to import: {type(error).__name__}: {first_line(error)}"
        )
    cls = next((m.group(1) for m in map(DESERIALIZE_FROM_MODULE.match, map(str, chain)) if m), None)
    of_class = f"the class '{cls}' from " if cls else "classes from "
    missing = next((e.name for e in chain if isinstance(e, ModuleNotFoundError) and e.name), None)
    top = missing.split(".")[0] if missing else None
    if top in PIP_NAMES:
        if not _installed(top):
            return ModelLoadError(
                f"{path}: the model uses {of_class}the package {top}, which is not installed: install "
                f"it (pip install {PIP_NAMES[top]}), or pass {errors.name('custom_objects')} FILE.py with the class"
            )
        return ModelLoadError(
            f"{path}: the model uses {of_class}the module {missing}, which the installed {top} does not "
            f"have (the file may need another version of {top}); or pass {errors.name('custom_objects')} FILE.py "
            "with the class"
        )
    name = next((m.group(1) for m in map(MISSING_OBJECT.match, map(str, chain)) if m), None)
    if name:
        return ModelLoadError(
            f"{path}: the model needs the custom class or function '{name}'; "
            f"pass {errors.name('custom_objects')} FILE.py with its definition"
        )
    return ModelLoadError(f"{path}: {what}: {type(exc).__name__ + ': ' if not isinstance(exc, Exception) else ''}"
                          f"{first_line(exc)}")


def _exception_chain(exc):
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _failed_import(chain):
    """(module, exception) when an exception of `chain` was raised while a module of
    FILE_IMPORTED_PACKAGES was being imported (its top-level code was running: a frame of
    the traceback is that module's body), the outermost such module; else None."""
    for error in chain:
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            module = frame.f_globals.get("__name__", "")
            if frame.f_code.co_name == "<module>" and module.split(".")[0] in FILE_IMPORTED_PACKAGES:
                return module, error
            tb = tb.tb_next
    return None


def _installed(package):
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a module without a spec, or one that cannot be searched
        return False
