"""Read PyTorch `.pth` files with numpy alone: zip (torch >= 1.6) and legacy pickle-stream formats.

`load(path)` returns the saved object with every tensor as a numpy array. Nothing in the file is
ever executed: the unpickler's `find_class` hands out only objects written here (tensor and
storage records, a few builtins, OrderedDict), and `persistent_load` accepts only storages.

Globals outside that allow-list (policy, see docs/parity.md):
* known metadata classes that real checkpoints carry next to the state dict (numpy arrays and
  scalars in MMPose 1.x `meta`, mmengine/mmcv objects in `message_hub`, ...) become inert
  `Placeholder` instances that only store their arguments;
* any other global (`posix.system`, `builtins.eval`, `subprocess.Popen`, ...) makes `load` raise
  `UnsafePickleError` naming it, at the moment the pickle asks for it, before anything could be
  called. Nothing named in a file is ever imported.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

__all__ = ["load", "Placeholder", "PthError", "UnsafePickleError", "sniff_format"]

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"  # protocol 2, then a 10-byte long: torch's magic number
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage class name -> numpy dtype of its raw bytes (bfloat16 widened to float32 later).
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}
# Harmless metadata found outside state dicts of real files -> placeholders.
METADATA_GLOBALS = frozenset(
    f"{mod}.{name}"
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")) | {
        "numpy.ndarray", "numpy.dtype", "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer", "argparse.Namespace", "datetime.datetime",
        "datetime.date", "datetime.timedelta", "pathlib.PosixPath", "pathlib.WindowsPath",
        "torch.device", "collections.defaultdict", "collections.deque", "collections.Counter",
    } | {f"torch.{t}" for t in ("float16", "float32", "float64", "bfloat16", "int8", "int16",
                                 "int32", "int64", "uint8", "bool")}
METADATA_MODULE_PREFIXES = ("mmengine.", "mmcv.", "mmpose.", "mmdet.")
_BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": bytearray, "complex": complex,
             "slice": slice, "list": list, "dict": dict, "tuple": tuple, "int": int,
             "float": float, "str": str, "bool": bool, "bytes": bytes, "range": range}


class PthError(ValueError):
  """The file is missing, truncated, or not a PyTorch checkpoint."""


class UnsafePickleError(PthError):
  """The pickle asks for a global outside the allow-list."""


class Placeholder:
  """Inert stand-in for an allowed foreign object: stores its arguments, runs nothing."""
  global_name = "?"

  def __new__(cls, *args, **kwargs):
    # Pickle's NEWOBJ calls __new__ without __init__; REDUCE calls both.
    self = super().__new__(cls)
    self.args, self.kwargs, self.state = args, kwargs, None
    return self

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"<Placeholder {self.global_name}>"


class _Storage:
  """A storage named by a persistent id; `data` (1-D numpy) is filled after unpickling."""

  def __init__(self, dtype: str, numel: int):
    self.dtype, self.numel, self.data = np.dtype(dtype), numel, None
    self.bfloat16 = False


class _Tensor:
  """Where a tensor's elements live; materialised once every storage is filled."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)


class _StorageType:
  def __init__(self, name: str):
    self.name = name


def _latin1_encode(text, encoding="latin1"):
  # Protocol-2 pickles spell every bytes object as _codecs.encode(str, 'latin1').
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError("_codecs.encode called with unexpected arguments")
  return text.encode("latin1")


class _Unpickler(pickle.Unpickler):
  """Allow-list unpickler; see the module docstring."""

  def __init__(self, file, storages: dict):
    super().__init__(file, encoding="latin1")
    self.storages = storages
    self._classes = {}

  def find_class(self, module, name):
    module = "builtins" if module == "__builtin__" else module
    full = f"{module}.{name}"
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return self._rebuild_tensor
    if module == "torch._utils" and name in ("_rebuild_parameter",
                                             "_rebuild_parameter_with_state"):
      return self._rebuild_parameter
    if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
      return _StorageType(name)
    if full == "torch.Size":
      return tuple
    if full == "collections.OrderedDict":
      return collections.OrderedDict
    if full == "_codecs.encode":
      return _latin1_encode
    if module == "builtins" and name in _BUILTINS:
      return _BUILTINS[name]
    if full in METADATA_GLOBALS or module.startswith(METADATA_MODULE_PREFIXES):
      return self._placeholder(full)
    raise UnsafePickleError(f"pickle reaches for global {full!r}, which is outside the "
                            "allow-list; refusing to load (nothing was executed)")

  def _placeholder(self, full: str):
    # A fresh subclass per name, so a pickle that mutates one cannot affect anything else.
    if full not in self._classes:
      self._classes[full] = type("Placeholder", (Placeholder,), {"global_name": full})
    return self._classes[full]

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid:
      raise PthError(f"unexpected persistent id {pid!r}")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
      raise PthError(f"unexpected persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self.storages:
      st = _Storage(STORAGE_DTYPES[storage_type.name], numel)
      st.bfloat16 = storage_type.name == "BFloat16Storage"
      self.storages[key] = st
    storage = self.storages[key]
    view = pid[5] if len(pid) == 6 else None
    if view is not None:  # torch <= 0.4: a slice (view_key, offset, numel) of the root storage
      view_key, offset, view_numel = view
      return ("view", storage, int(offset), int(view_numel))
    return storage

  def _rebuild_tensor(self, storage, offset, size, stride, *unused):
    if isinstance(storage, tuple) and storage and storage[0] == "view":
      _, storage, base, _ = storage
      offset = base + offset
    if not isinstance(storage, _Storage):
      raise PthError("tensor record without a storage")
    return _Tensor(storage, offset, size, stride)

  def _rebuild_parameter(self, data, *unused):
    return data


def sniff_format(head: bytes) -> str:
  """'zip' or 'legacy' from the first bytes; raises PthError otherwise."""
  if head.startswith(ZIP_MAGIC):
    return "zip"
  if head.startswith(LEGACY_MAGIC):
    return "legacy"
  if head[257:262] == b"ustar":
    raise PthError("a tar archive (torch < 0.1.10 format) is not supported")
  raise PthError("not a PyTorch checkpoint (neither the zip nor the legacy pickle format)")


def _load_zip(raw: bytes) -> Any:
  zf = zipfile.ZipFile(io.BytesIO(raw))
  names = zf.namelist()
  pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
  if not pkl:
    if any(n.endswith("constants.pkl") for n in names):
      raise PthError("a TorchScript archive, not a saved state dict")
    raise PthError("a zip file without data.pkl: not a PyTorch checkpoint")
  root = pkl[0][:-len("data.pkl")]
  big = f"{root}byteorder" in names and zf.read(f"{root}byteorder").strip() == b"big"
  storages = {}
  obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
  for key, st in storages.items():
    member = f"{root}data/{key}"
    if member not in names:
      raise PthError(f"storage {member} is missing from the archive")
    dtype = st.dtype.newbyteorder(">") if big else st.dtype
    st.data = np.frombuffer(zf.read(member), dtype)
  return obj


def _load_legacy(raw: bytes) -> Any:
  f = io.BytesIO(raw)
  # The three header pickles hold plain ints/dicts; load them with the same allow-list.
  magic = _Unpickler(f, {}).load()
  if magic != LEGACY_MAGIC_NUMBER:
    raise PthError("invalid magic number: not a PyTorch checkpoint")
  protocol = _Unpickler(f, {}).load()
  if protocol != LEGACY_PROTOCOL:
    raise PthError(f"unsupported legacy protocol version {protocol}")
  sys_info = _Unpickler(f, {}).load()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise PthError("big-endian legacy files are not supported")
  storages = {}
  obj = _Unpickler(f, storages).load()
  keys = _Unpickler(f, {}).load()
  for key in keys:
    st = storages.get(str(key))
    count = np.frombuffer(f.read(8), "<i8")
    if st is None or count.size != 1:
      raise PthError("truncated or corrupt storage section")
    nbytes = int(count[0]) * st.dtype.itemsize
    buf = f.read(nbytes)
    if len(buf) != nbytes:
      raise PthError("truncated file: storage data ends early")
    st.data = np.frombuffer(buf, st.dtype)
  return obj


def _materialise(t: _Tensor) -> np.ndarray:
  st = t.storage
  if st.data is None:
    raise PthError("a tensor refers to a storage that is not in the file")
  n = int(np.prod(t.size)) if t.size else 1
  if n == 0:
    arr = np.zeros(t.size, st.dtype)
  else:
    if any(d < 0 for d in t.stride) or len(t.stride) != len(t.size):
      raise PthError("a tensor record has invalid strides")
    last = t.offset + sum((s - 1) * d for s, d in zip(t.size, t.stride))
    if t.offset < 0 or last >= st.data.size:
      raise PthError("a tensor reaches past the end of its storage (truncated file?)")
    item = st.dtype.itemsize
    arr = np.lib.stride_tricks.as_strided(
        st.data[t.offset:], shape=t.size, strides=tuple(d * item for d in t.stride))
    arr = np.array(arr, dtype=st.dtype.newbyteorder("="))
  if st.bfloat16:
    arr = (arr.astype(np.uint32) << 16).view(np.float32)
  return arr


def _walk(obj, seen: dict):
  """Replaces tensor records by arrays inside dicts, lists, tuples and placeholders."""
  if isinstance(obj, _Tensor):
    return _materialise(obj)
  if id(obj) in seen:
    return seen[id(obj)]
  if isinstance(obj, dict):
    seen[id(obj)] = obj
    for k in list(obj):
      obj[k] = _walk(obj[k], seen)
    return obj
  if isinstance(obj, list):
    seen[id(obj)] = obj
    obj[:] = [_walk(v, seen) for v in obj]
    return obj
  if isinstance(obj, tuple):
    out = tuple(_walk(v, seen) for v in obj)
    seen[id(obj)] = out
    return out
  if isinstance(obj, Placeholder):
    seen[id(obj)] = obj
    obj.args = _walk(obj.args, seen)
    obj.state = _walk(obj.state, seen)
  return obj


def load(path: str | os.PathLike) -> Any:
  """Loads a torch.save file; tensors become numpy arrays (bfloat16 -> float32).

  Raises:
    PthError: missing, truncated or not a checkpoint (message names the file).
    UnsafePickleError: the pickle reaches for a global outside the allow-list.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise PthError(f"{path}: cannot read: {e.strerror or e}") from None
  try:
    fmt = sniff_format(raw[:512])
    obj = _load_zip(raw) if fmt == "zip" else _load_legacy(raw)
    return _walk(obj, {})
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except PthError as e:
    raise PthError(f"{path}: {e}") from None
  except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
          IndexError, TypeError, AttributeError, OverflowError, MemoryError, RecursionError,
          struct.error) as e:
    raise PthError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from None
