"""The datasets there are: one ``DatasetSpec`` each in ``DATASETS``, keyed by ``data.name``.

A spec says where the official files lie under a root (its own layout and torchvision's), which reader of
``data.formats`` decodes them, how torchvision downloads them, and the dataset's classes and statistics.
The validation split is each dataset's official test split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from core.registry import Registry
from data.download import torchvision_download
from data.formats import class_folders, read_cifar_batch, read_idx_split, read_image_folders
from data.specs import DatasetSpec, Split

DATASETS = Registry("dataset", "data.name")


def get_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


# ----------------------------------------------------------------------------- CIFAR


def _cifar_files(folder: str, train: list[str], test: list[str]):
    def find(root: Path) -> Optional[list[Path]]:
        for base in (root / folder, root):
            files = [base / f for f in train + test]
            if all(f.is_file() for f in files):
                return files
        return None

    def expected(root: Path) -> str:
        return f"{root / folder}/{{{','.join(train + test)}}}"

    return find, expected


def _concat(splits: list[Split]) -> Split:
    return torch.cat([s[0] for s in splits]), torch.cat([s[1] for s in splits])


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split())  # the fine labels, in label order


def _cifar(name, folder, train, test, label_key, num_classes, mean, std, tv_class, classes):
    find, expected = _cifar_files(folder, train, test)

    def decode(files: list[Path]) -> tuple[Split, Split]:
        batches = [read_cifar_batch(f, label_key, num_classes) for f in files]
        return _concat(batches[: len(train)]), _concat(batches[len(train):])

    return DatasetSpec(name, num_classes, 3, 32, mean, std, "crop_flip", find, decode,
                       torchvision_download(tv_class, train=True), expected, classes)


DATASETS.register(_cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                         ["test_batch"], b"labels", 10,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10", CIFAR10_CLASSES), name="cifar10")
DATASETS.register(_cifar("cifar100", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                         (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100", CIFAR100_CLASSES),
                  name="cifar100")


# ----------------------------------------------------------------------------- MNIST family (idx files)

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")


def _mnist(name: str, folder: str, mean: float, std: float, augment: str, tv_class: str,
           classes: tuple[str, ...]) -> DatasetSpec:
    def find(root: Path) -> Optional[list[Path]]:
        for base in (root, root / folder / "raw"):
            files = []
            for stem in IDX_FILES:
                hit = next((p for p in (base / stem, base / f"{stem}.gz") if p.is_file()), None)
                if hit is None:
                    break
                files.append(hit)
            else:
                return files
        return None

    def expected(root: Path) -> str:
        return (f"the four idx files {', '.join(f + '[.gz]' for f in IDX_FILES)} "
                f"in {root} or in {root / folder / 'raw'}")

    def decode(files: list[Path]) -> tuple[Split, Split]:
        return read_idx_split(*files[:2], (28, 28), 10), read_idx_split(*files[2:], (28, 28), 10)

    return DatasetSpec(name, 10, 1, 28, (mean,), (std,), augment, find, decode,
                       torchvision_download(tv_class, train=True), expected, classes)


DATASETS.register(_mnist("mnist", "MNIST", 0.1307, 0.3081, "none", "MNIST", tuple("0123456789")), name="mnist")
DATASETS.register(_mnist("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, "flip", "FashionMNIST",
                         FASHION_MNIST_CLASSES), name="fashion_mnist")


# ----------------------------------------------------------------------------- Imagenette (image folders)

IMAGENETTE_DIR = "imagenette2-160"
IMAGENETTE_SIZE = 160  # stored size: shorter side resized to 160, centre-cropped square (formats.resize_crop)
# The folders n01440764, n02102040, ... in sorted order, i.e. label order.
IMAGENETTE_CLASSES = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                      "garbage truck", "gas pump", "golf ball", "parachute")


def _imagenette_find(root: Path) -> Optional[list[Path]]:
    for base in (root / IMAGENETTE_DIR, root):
        train, val = class_folders(base / "train"), class_folders(base / "val")
        if train and [d.name for d in train] == [d.name for d in val]:
            return train + val
    return None


def _imagenette_decode(class_dirs: list[Path]) -> tuple[Split, Split]:
    half = len(class_dirs) // 2
    return (read_image_folders(class_dirs[:half], IMAGENETTE_SIZE),
            read_image_folders(class_dirs[half:], IMAGENETTE_SIZE))


DATASETS.register(DatasetSpec(
    "imagenette", 10, 3, IMAGENETTE_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rrc_flip",
    _imagenette_find, _imagenette_decode, torchvision_download("Imagenette", split="train", size="160px"),
    lambda root: f"{root / IMAGENETTE_DIR}/{{train,val}}/<class folder>/*.JPEG", IMAGENETTE_CLASSES,
), name="imagenette")
