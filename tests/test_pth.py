"""The numpy-only .pth reader: bit-exact tensors, both formats, no code execution, no torch.

torch writes the test files; the checks that need none (hand-made files) run without it.
"""
import collections
import io
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sbpose_jax.weights import pth

try:
  import torch
  import torch_reference as tr
except ImportError:
  torch = tr = None
FORMATS = ("zip", "legacy")
needs_torch = pytest.mark.skipif(torch is None, reason="torch writes these test files")

REPO = pathlib.Path(__file__).resolve().parent.parent


def _edge_case_tensors():
  base = torch.arange(30, dtype=torch.float32).reshape(6, 5)
  d = collections.OrderedDict(
      conv=torch.randn(4, 3, 3, 3), offset_view=base[2:, 1:], transposed=base.t(), shared=base,
      expanded=torch.randn(3, 1).expand(3, 4), half=torch.randn(4).half(),
      bfloat16=torch.randn(5).bfloat16(), double=torch.randn(2, 2).double(),
      num_batches_tracked=torch.tensor(7), int32=torch.arange(5, dtype=torch.int32),
      int16=torch.arange(3, dtype=torch.int16), int8=torch.arange(-3, 3, dtype=torch.int8),
      uint8=torch.arange(5, dtype=torch.uint8), bool=torch.tensor([True, False]),
      empty=torch.zeros(0, 3), parameter=torch.nn.Parameter(torch.randn(2)))
  d._metadata = collections.OrderedDict({"": {"version": 2}})
  return d


def _as_numpy(t):
  t = t.detach()
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@needs_torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_tensors_bit_exact(tmp_path, fmt):
  sd = _edge_case_tensors()
  obj = {"state_dict": sd, "meta": {"epoch": 3, "set": {1, 2}, "bytes": b"\x00\xff",
                                    "array": np.arange(3), "scalar": np.float64(0.5)}}
  path = tmp_path / "x.pth"
  torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
  assert pth.sniff_format(path.read_bytes()[:8]) == fmt
  got = pth.load(path)
  loaded = got["state_dict"]
  assert isinstance(loaded, collections.OrderedDict) and list(loaded) == list(sd)
  assert loaded._metadata == {"": {"version": 2}}
  for key, value in sd.items():
    want = _as_numpy(value)
    assert loaded[key].dtype == want.dtype and loaded[key].shape == want.shape, key
    np.testing.assert_array_equal(loaded[key], want, err_msg=key)
  meta = got["meta"]
  assert (meta["epoch"], meta["set"], meta["bytes"]) == (3, {1, 2}, b"\x00\xff")
  # Foreign-but-harmless objects come back inert.
  assert isinstance(meta["array"], pth.Placeholder)
  assert meta["array"].global_name.endswith("multiarray._reconstruct")
  assert isinstance(meta["scalar"], pth.Placeholder)


@needs_torch
@pytest.mark.parametrize("fmt", FORMATS)
def test_mmpose1_wrapper_objects_load(tmp_path, fmt):
  model = tr.PoseResNet(18, 3)
  path = tmp_path / "mm1.pth"
  tr.save(model, "mm1", fmt, path)
  got = pth.load(path)
  assert set(got) == {"meta", "state_dict", "message_hub", "param_schedulers"}
  buf = got["message_hub"]["log_scalars"]["train/loss"]
  assert buf.global_name == "mmengine.logging.history_buffer.HistoryBuffer"
  assert isinstance(buf.state["_log_history"], pth.Placeholder)
  assert got["state_dict"]._metadata[""] == model.state_dict()._metadata[""]
  np.testing.assert_array_equal(got["state_dict"]["head.final_layer.weight"],
                                model.final_layer.weight.detach().numpy())


class _Reduce:
  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return (self.func, self.args)


@needs_torch
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["meta", "state_dict"])
def test_hostile_pickle_runs_nothing(tmp_path, fmt, where):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  tr.save_hostile(path, marker, fmt, where)
  with pytest.raises(pth.UnsafePickleError, match=r"system.*allow-list") as e:
    pth.load(path)
  assert str(path) in str(e.value)
  assert not marker.exists()


@needs_torch
@pytest.mark.parametrize("func,args", [
    (eval, ("__import__('os').getcwd()",)),
    (getattr, (_Reduce(__import__, "os"), "system")),
    (subprocess.Popen, (["true"],)),
    (__import__, ("os",)),
])
def test_other_dangerous_globals_are_refused(tmp_path, func, args):
  path = tmp_path / "evil.pth"
  torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": _Reduce(func, *args)}, path)
  with pytest.raises(pth.UnsafePickleError, match=func.__name__):
    pth.load(path)


def test_protocol0_global_in_zip_is_refused(tmp_path):
  # A hand-written data.pkl using the GLOBAL opcode (text protocol): `os.system('touch ...')`.
  marker = tmp_path / "pwned"
  payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
  path = tmp_path / "evil.pth"
  import zipfile  # why: only this test or script needs it
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/version", "3\n")
  with pytest.raises(pth.UnsafePickleError, match="os.system"):
    pth.load(path)
  assert not marker.exists()


def test_bad_files(tmp_path):
  with pytest.raises(pth.PthError, match="missing.pth: cannot read"):
    pth.load(tmp_path / "missing.pth")
  (tmp_path / "text.pth").write_text("not a checkpoint")
  with pytest.raises(pth.PthError, match="not a PyTorch checkpoint"):
    pth.load(tmp_path / "text.pth")
  (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))
  with pytest.raises(pth.PthError, match="not a PyTorch checkpoint"):
    pth.load(tmp_path / "plain.pkl")


@needs_torch
def test_truncated_files_name_the_file(tmp_path):
  for fmt in FORMATS:
    buf = io.BytesIO()
    torch.save({"w": torch.randn(100, 100)}, buf, _use_new_zipfile_serialization=(fmt == "zip"))
    raw = buf.getvalue()
    for cut in (len(raw) // 2, len(raw) - 7, 40):
      (tmp_path / "cut.pth").write_bytes(raw[:cut])
      with pytest.raises(pth.PthError, match="cut.pth"):
        pth.load(tmp_path / "cut.pth")


@needs_torch
def test_reader_never_imports_torch(tmp_path):
  expected = {}
  for fmt in tr.FORMATS:
    sd = collections.OrderedDict(a=torch.randn(3, 4), h=torch.randn(5).half(),
                                 n=torch.tensor(2))
    torch.save({"state_dict": sd}, tmp_path / f"{fmt}.pth",
               _use_new_zipfile_serialization=(fmt == "zip"))
    expected[fmt] = float(sum(v.double().sum() for v in sd.values()))
  code = (
      "import sys; sys.modules['torch'] = None\n"
      "from sbpose_jax.weights import pth\n"
      "for fmt in ('zip', 'legacy'):\n"
      "  sd = pth.load(sys.argv[1] + '/' + fmt + '.pth')['state_dict']\n"
      "  print(fmt, sum(float(v.astype('float64').sum()) for v in sd.values()))\n"
      "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v]\n")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
  assert proc.returncode == 0, proc.stderr
  for line in proc.stdout.splitlines():
    fmt, total = line.split()
    assert float(total) == pytest.approx(expected[fmt], abs=1e-9)
