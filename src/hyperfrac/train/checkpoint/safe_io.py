"""Reading and writing run-folder ``.pt`` files without pickle's code execution.

Every file is read with ``torch.load(..., weights_only=True)``: the restricted unpickler builds
tensors, numbers, strings, bytes, ``None``, lists, tuples, sets and dicts and nothing else, so a
file carrying a pickle payload (an object whose ``__reduce__`` calls ``os.system``) is refused
before anything runs (:class:`UnsafeCheckpointError`).

What :func:`save_state` writes loads that way and round-trips exactly. State that holds numpy
values (``np.random.get_state()`` is a tuple with a ``uint32`` array) is stored in a small tagged
encoding: each array or numpy scalar becomes ``{"__hyperfrac__": "ndarray" | "npscalar",
"dtype": "<u4", "shape": [...], "data": uint8 tensor}`` and the whole object is wrapped in
``{"__hyperfrac_state__": 1, "payload": ...}``; tuples stay tuples. State without numpy values
(model, optimizer and scheduler state dicts) is written as the plain object, which anyone can
``torch.load(path, weights_only=True)``. Values of any other type are refused when *saving*,
so a checkpoint that cannot be resumed is never written.

Files written before this format (hyperfrac 0.1.0 stored ``train_state.pt`` with raw numpy
arrays) still load: numpy arrays of plain numeric dtypes are allow-listed for exactly that
(:func:`load_state`); object arrays and every other global stay refused. Anything else that
needs pickle must be converted explicitly by someone who trusts the folder
(:func:`hyperfrac.train.checkpoint.convert_legacy_checkpoint`).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperfrac import __version__

STATE_KEY = "__hyperfrac_state__"
TAG_KEY = "__hyperfrac__"
_FORMAT_VERSION = 1

_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_EMPTY = torch.empty(0, dtype=torch.uint8)


class CheckpointError(RuntimeError):
    """A checkpoint folder or file that is missing, corrupt, unverifiable or unsafe to load."""


class UnsafeCheckpointError(CheckpointError):
    """A run-folder file that only loads with pickle (which may run code); never executed."""


def refusal_message(path: Path, detail: str = "", *, convertible: bool = True) -> str:
    """The one-line message for a file that needs pickle (``convertible``: name the explicit
    conversion for trusted folders)."""
    why = f" ({detail})" if detail else ""
    fix = f"re-save it with a current hyperfrac ({__version__})"
    if convertible:
        fix += (
            " or, only if you trust where the folder came from, convert it with "
            f"hyperfrac.train.checkpoint.convert_legacy_checkpoint('{path.parent}')"
        )
    return (
        f"{path} needs pickle to load and hyperfrac refuses to unpickle it{why}; "
        f"it may run code; {fix}"
    )


# ------------------------------------------------------------------------------ encoding


def _encode_array(arr: np.ndarray, tag: str, where: str) -> dict[str, Any]:
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise TypeError(f"{where} is a numpy array of dtype {arr.dtype} (object or structured)")
    raw = np.ascontiguousarray(arr).tobytes()
    if not raw:
        return {TAG_KEY: tag, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": _EMPTY}
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return {TAG_KEY: tag, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": data}


def _encode(obj: Any, where: str, found: list[bool]) -> Any:
    """``obj`` with numpy values tagged; raises TypeError naming ``where`` for other types."""
    kind = type(obj)
    if kind in _LEAVES or kind in _TENSORS or kind is torch.Size:
        return obj
    if kind is np.ndarray:
        found[0] = True
        return _encode_array(obj, "ndarray", where)
    if isinstance(obj, np.generic):
        found[0] = True
        return _encode_array(np.asarray(obj), "npscalar", where)
    if kind in (list, tuple, set):
        items = [_encode(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
        return kind(items)
    if kind in (dict, collections.OrderedDict):
        if TAG_KEY in obj or STATE_KEY in obj:
            raise TypeError(f"{where} is a dict with the reserved key {TAG_KEY!r} or {STATE_KEY!r}")
        out = kind((k, _encode(v, f"{where}[{k!r}]", found)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # nn.Module.state_dict() version record
            out._metadata = obj._metadata
        return out
    raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}")


def encode_state(obj: Any, name: str = "state") -> Any:
    """The object :func:`save_state` writes for ``obj`` (tagged and wrapped only if it holds
    numpy values). Raises :class:`CheckpointError` naming the first value that needs pickle."""
    found = [False]
    try:
        enc = _encode(obj, name, found)
    except TypeError as e:
        raise CheckpointError(
            f"{e}, which a checkpoint cannot store without pickle; keep state as "
            "tensors, numbers, strings, lists, tuples, dicts or numeric numpy arrays"
        ) from None
    return {STATE_KEY: _FORMAT_VERSION, "payload": enc} if found[0] else enc


def _decode(obj: Any) -> Any:
    kind = type(obj)
    if kind in (dict, collections.OrderedDict):
        if TAG_KEY in obj:
            dtype = np.dtype(obj["dtype"])
            raw = obj["data"].numpy().tobytes()
            arr = np.frombuffer(raw, dtype=dtype).reshape(obj["shape"]).copy()
            return arr[()] if obj[TAG_KEY] == "npscalar" else arr
        out = kind((k, _decode(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if kind in (list, tuple, set):
        return kind(_decode(v) for v in obj)
    return obj


def decode_state(obj: Any) -> Any:
    """Inverse of :func:`encode_state`; plain objects pass through unchanged."""
    if type(obj) is dict and STATE_KEY in obj:
        if obj[STATE_KEY] != _FORMAT_VERSION:
            raise CheckpointError(
                f"state format {obj[STATE_KEY]} is newer than this hyperfrac ({__version__}) "
                "reads; upgrade hyperfrac"
            )
        return _decode(obj["payload"])
    return obj


# --------------------------------------------------------------------------- save / load


def save_state(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that :func:`load_state` returns an equal object."""
    torch.save(encode_state(obj, Path(path).name), path)


def _reconstruct_ndarray(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy array subtype {subtype} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numeric_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"numpy dtype {dtype} is not a plain numeric dtype")
    return dtype


def _numeric_scalar(dtype: Any, data: Any) -> np.generic:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar must be a numeric dtype and its bytes")
    return np.frombuffer(data, dtype=_numeric_dtype(dtype))[0]


def _legacy_numpy_globals() -> list[Any]:
    """The allow-list for numpy arrays in files written by hyperfrac 0.1.0: arrays of plain
    numeric dtypes only (object arrays, subclasses and every other global stay refused)."""
    dtype_classes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}
    return [
        (_reconstruct_ndarray, "numpy._core.multiarray._reconstruct"),
        (_reconstruct_ndarray, "numpy.core.multiarray._reconstruct"),
        (_numeric_dtype, "numpy.dtype"),
        (_numeric_scalar, "numpy._core.multiarray.scalar"),
        (_numeric_scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        *sorted(dtype_classes, key=lambda c: c.__name__),
    ]


def _needs_pickle(e: Exception) -> bool:
    return isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e)


def load_state(path: Path, source: bytes | None = None) -> Any:
    """Read a file written by :func:`save_state` (or a plain ``torch.save`` of tensors and
    containers) on CPU with ``weights_only=True``. ``source``: the file's bytes, if already
    read. Raises :class:`UnsafeCheckpointError` for a file that needs pickle and
    :class:`CheckpointError` for one that is not a readable torch file."""
    path = Path(path)

    def load() -> Any:
        f = io.BytesIO(source) if source is not None else path
        return torch.load(f, map_location="cpu", weights_only=True)

    try:
        obj = load()
    except Exception as e:
        if not _needs_pickle(e):
            raise CheckpointError(f"checkpoint file {path} is unreadable ({e})") from e
        try:
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                obj = load()
        except Exception as e2:
            if _needs_pickle(e2) or isinstance(e2, pickle.UnpicklingError):
                raise UnsafeCheckpointError(refusal_message(path, unpickler_reason(e2))) from None
            raise CheckpointError(f"checkpoint file {path} is unreadable ({e2})") from e2
    try:
        return decode_state(obj)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # a malformed tagged value
        raise CheckpointError(f"checkpoint file {path} is unreadable ({e})") from None


def unpickler_reason(e: Exception) -> str:
    """The unpickler's reason in a few words (e.g. ``it references posix.system``)."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it references {m.group(1)}"
    for line in text.splitlines():
        if line.strip().startswith("WeightsUnpickler error:"):
            return line.strip().removeprefix("WeightsUnpickler error:").strip()
    return ""
