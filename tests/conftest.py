import os
import pathlib
import shutil
import tempfile

import pytest

# Keep JAX on the CPU and quiet in tests; the 8-device tests spawn their own processes.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole session, this process and every subprocess it
# starts (they inherit the environment): the training runs of a test (a run, the same run killed,
# its resume) and tests that build the same small model compile each program once. Every
# program is cached, not only the slow ones (JAX's defaults skip compiles under 1 s, most of a
# tiny model's). Set here, before anything imports JAX; a fresh folder per session, so that no
# result depends on an earlier run. A size limit turns on JAX's file lock around every read and
# write: processes that compile the same program at once (the 2-process test, pytest-xdist's
# workers, which inherit this environment) never read an entry half written.
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="sbpose_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _SESSION_CACHE is not None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  """Real dataset samples in ../shared/fixtures; tests using it skip when it is absent."""
  if not FIXTURES.is_dir():
    pytest.skip("../shared/fixtures is absent")
  return FIXTURES
