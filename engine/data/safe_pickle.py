"""Restricted pickle I/O for plain data (project rule: never execute untrusted pickle code).

The data files this project must read are pickles: the official CIFAR batches (written by
Python 2, hence ``encoding='latin1'``), the Tiny Images selection ``ti_80M_selected.pickle``
and upstream pseudo-label files (docs/protocols.md#semi-supervised-pipeline). A normal ``pickle.load`` calls whatever
global a file names, so a crafted file runs arbitrary code. ``load`` resolves only the
globals that plain containers and NumPy arrays need; anything else raises
``pickle.UnpicklingError`` naming the refused global and the file.
"""
import os
import pickle

from engine.train.checkpoint import atomic_write

_NUMPY_GLOBALS = {
    # ndarray.__reduce_ex__ for protocols <= 4 (numpy 1.x spelling and numpy 2.x spelling).
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # NumPy scalars (np.int64(3), np.float32(...)).
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # ndarray.__reduce_ex__ for protocol 5 (np.frombuffer + reshape; refuses object dtype).
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
_CONTAINER_GLOBALS = {
    (module, name)
    for module in ("builtins", "__builtin__")  # Python 3 / Python 2 spelling
    for name in ("set", "frozenset", "bytearray", "complex")
} | {("_codecs", "encode")}  # how protocols <= 2 store Python 3 bytes

ALLOWED_GLOBALS = frozenset(_NUMPY_GLOBALS | _CONTAINER_GLOBALS)
PROTOCOL = 4  # arrays round-trip through the protocol <= 4 globals above on any Python 3.8+


class _Refused(pickle.UnpicklingError):
    """A global outside ``ALLOWED_GLOBALS``: the file was refused, not found unreadable."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, encoding):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise _Refused(
                f"refused global '{module}.{name}' in {self._path} (nothing in it was run): engine.data.safe_pickle "
                "only loads plain data (containers, numbers, strings, NumPy arrays); convert the file to .npz or "
                "re-save it from trusted code")
        return super().find_class(module, name)


def load(path, encoding="ASCII"):
    """Unpickle ``path`` allowing only ``ALLOWED_GLOBALS``.

    ``encoding`` decodes Python 2 ``str`` objects as in ``pickle.load``; use ``'latin1'`` for
    Python 2 files holding NumPy arrays (the official CIFAR batches).
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, os.fspath(path), encoding).load()
        except _Refused:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                OverflowError, MemoryError, RecursionError) as e:  # what garbage makes the unpickler raise
            what = "zero bytes" if os.path.getsize(path) == 0 else f"{type(e).__name__}: {' '.join(str(e).split())}"
            raise pickle.UnpicklingError(f"{os.fspath(path)}: not a readable pickle (truncated or another "
                                         f"format: {what})") from None


def dump(obj, path):
    """Pickle ``obj`` to ``path`` atomically (engine.train.checkpoint.atomic_write)."""
    atomic_write(os.fspath(path), lambda f: pickle.dump(obj, f, protocol=PROTOCOL))
