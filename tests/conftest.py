import os
import pathlib

import pytest

# Keep JAX on the CPU and quiet in tests; the 8-device tests spawn their own processes.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  """Real dataset samples in ../shared/fixtures; tests using it skip when it is absent."""
  if not FIXTURES.is_dir():
    pytest.skip("../shared/fixtures is absent")
  return FIXTURES
