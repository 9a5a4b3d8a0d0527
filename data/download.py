"""Fetching a dataset's official files through torchvision, with a bound on how long the network may stall."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError
from data.problems import brief
from data.specs import DatasetSpec

DOWNLOAD_TIMEOUT_S = 60  # seconds without progress before a download gives up


def torchvision_download(class_name: str, **options: Any) -> Callable[[Path], None]:
    """A ``DatasetSpec.download``: ``torchvision.datasets.<class_name>(root, **options, download=True)``,
    which fetches the files into ``root`` (torchvision is imported only then)."""

    def download(root: Path) -> None:
        import torchvision.datasets as tvd

        getattr(tvd, class_name)(str(root), **options, download=True)

    return download


def fetch(spec: DatasetSpec, root: Path, looked: list[str]) -> None:
    """``spec.download(root)``, creating ``root``; a failure is a UserError naming the places ``looked``."""
    # torchvision opens its URLs without a timeout: a network that drops packets would hang the run.
    # This bounds each socket operation (not the whole download) and is restored right after.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        root.mkdir(parents=True, exist_ok=True)
        spec.download(root)
    except Exception as e:  # network, disk, checksum: all the user can act on
        raise UserError(f"data.root: {spec.name} not found and the download failed ({brief(e)}); "
                        f"expected {'; or '.join(looked)}; see docs/datasets.md, 'Datasets offline'") from None
    finally:
        socket.setdefaulttimeout(previous)
