import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def fmnist_root(tmp_path):
    from fixtures import write_mnist

    return write_mnist(tmp_path / "fmnist", n_train=256, n_test=128)
