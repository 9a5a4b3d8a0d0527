import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def no_system_datasets(tmp_path_factory, monkeypatch):
    """Tests never find (or depend on) datasets installed on this machine (/usr/share/datasets)."""
    monkeypatch.setenv("VITLAB_SYSTEM_DATASETS", str(tmp_path_factory.mktemp("system-datasets")))


@pytest.fixture
def fmnist_root(tmp_path):
    from fixtures import write_mnist

    return write_mnist(tmp_path / "fmnist", n_train=256, n_test=128)
