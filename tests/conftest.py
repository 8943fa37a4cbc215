import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# One thread per test worker: make test runs two workers on two cores.
for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(var, '1')


@pytest.fixture(scope='session')
def root():
    return ROOT


def torch_or_skip():
    "PyTorch, the test oracle, with one thread; the calling test is skipped where torch is not installed."
    torch = pytest.importorskip('torch')
    torch.set_num_threads(1)
    return torch


def load_from_torch(ours, theirs):
    "Copy a torch module's weights into ours (same state-dict names and layouts)."
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
