"""Data sources: read a data set's official train and test pools from disk (or from scikit-learn).

Every source is registered in `SOURCES` and built as

    SOURCES.build(name, root=folder_or_None, image_size=int_or_None) -> SourcePools

`SourcePools` holds the pools at the files' own resolution (uint8 where the files are uint8, to
keep a 232k-image K49 pool at 180 MB instead of 730 MB); `images(...)` turns the few images a
trial selects into float32 tensors in [0, 1] at `image_size`. Files are read directly in their
official formats (K49 npz, CIFAR python pickles, GTSRB ppm folders as torchvision lays them
out), nothing is downloaded and nothing is cached on disk. A missing or malformed folder raises
`git_ray.config.ConfigError` saying which files are expected where and how to get them.

`check_source_files(name, root)` is the cheap version of that check (files present, nothing
read), run by the command line's preflight for every distinct data set of a sweep before any
work starts; a source registers one with `describe_source` (no check is the default, right for a
source whose data needs no files). `native_size(name)` is a source's own image size, which the
config needs to validate generator settings before the files are read.
"""
from __future__ import annotations

import csv
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from git_ray.registry import SOURCES


def config_error(message: str) -> Exception:
    """A git_ray.config.ConfigError. Imported at call time: git_ray.config validates default
    configs against the registries while it loads, which imports this package, so importing it
    here at module level would register nothing when git_ray.data is imported first."""
    from git_ray.config import ConfigError

    return ConfigError(message)


_NATIVE_SIZES: dict[str, int] = {}
_FILE_CHECKS: dict[str, Callable[[str | None], Any]] = {}


def describe_source(name: str, *, size: int | None = None,
                    check_files: Callable[[str | None], Any] | None = None) -> None:
    """Declare a source's own image size and its files-present check (both optional)."""
    if size is not None:
        _NATIVE_SIZES[name] = size
    if check_files is not None:
        _FILE_CHECKS[name] = check_files


def native_size(name: str) -> int | None:
    """The side length a source's images have when dataset.image_size is not set (None: unknown)."""
    return _NATIVE_SIZES.get(name)


def check_source_files(name: str, root: str | None) -> None:
    """Raise ConfigError when `root` lacks a file the source reads; reads no data."""
    check = _FILE_CHECKS.get(name)
    if check is not None:
        check(root)


@dataclass
class SourcePools:
    """A data set's official pools. x_*: (N, C, h, w) uint8 (0..255) or float32 (0..1)."""

    name: str
    x_train: Tensor
    y_train: Tensor  # (N,) int64
    x_test: Tensor | None  # None: no official test split (the dataset builder holds one out)
    y_test: Tensor | None
    num_classes: int
    image_size: int  # side length that `images` returns
    default_max_per_class: int | None  # largest class of the long-tailed set; None: largest pool

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    def images(self, split: str, index: Tensor | np.ndarray | None = None) -> Tensor:
        """Float32 images in [0, 1] at `image_size`, (n, C, S, S), for `index` into a split."""
        x = {"train": self.x_train, "test": self.x_test}[split]
        if x is None:
            raise ValueError(f"source {self.name!r} has no official {split} split")
        if index is not None:
            x = x[torch.as_tensor(np.asarray(index), dtype=torch.long)]
        return to_float_images(x, self.image_size)


def to_float_images(x: Tensor, size: int) -> Tensor:
    """uint8 (0..255) or float images -> float32 in [0, 1], resized (bilinear) to size x size."""
    out = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # (n, C, h, w)
    if out.shape[-1] != size or out.shape[-2] != size:
        if out.shape[0] == 0:
            return out.new_zeros(0, out.shape[1], size, size)
        # antialias only matters when shrinking; it keeps thin strokes from aliasing away.
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=size < max(out.shape[-2:]))
        out = out.clamp_(0.0, 1.0)
    return out.contiguous()


def _labels(y: Any, n: int, num_classes: int, where: str) -> Tensor:
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise config_error(f"{where}: {y.shape[0]} labels for {n} images; the files do not match")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise config_error(f"{where}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return torch.from_numpy(y.astype(np.int64))


def _need_root(root: str | None, source: str, how: str) -> Path:
    if root is None:
        raise config_error(f"dataset.root is not set, but source {source!r} reads its files from a folder.\n{how}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise config_error(f"dataset.root {str(path)!r} is not a folder (source {source!r}).\n{how}")
    return path


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits (no download)


@SOURCES.register("digits")
def load_digits_source(*, root: str | None = None, image_size: int | None = None) -> SourcePools:
    """scikit-learn's 1,797 8x8 digits (values 0..16 -> [0, 1]), bilinearly upsampled (default 16).

    There is no official test split: the dataset builder holds one out per class. `root` is unused.
    """
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    size = image_size or 16
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    # Upsample once here: the pool is tiny, and exact zeros stay zero (the background nuisance needs them).
    x = to_float_images(x, size)  # (N, 1, S, S)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return SourcePools("digits", x, y, None, None, num_classes=10, image_size=size,
                       default_max_per_class=100)


describe_source("digits", size=16)


# ---------------------------------------------------------------------------------------------
# k49: Kuzushiji-49 npz files

K49_FILES = ("k49-train-imgs.npz", "k49-train-labels.npz", "k49-test-imgs.npz", "k49-test-labels.npz")
K49_HOW = ("Source 'k49' expects the four official Kuzushiji-49 files directly in dataset.root: "
           + ", ".join(K49_FILES) + " (each holding array 'arr_0'; images uint8 (N, 28, 28)). "
           "Get them from https://github.com/rois-codh/kmnist (download_data.py, choose Kuzushiji-49, "
           "NumPy format) or http://codh.rois.ac.jp/kmnist/dataset/k49/.")


def _read_npz(path: Path) -> np.ndarray:
    if not path.is_file():
        raise config_error(f"missing file {str(path)!r}.\n{K49_HOW}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "arr_0" not in npz.files:
                raise config_error(f"{str(path)!r} has no array 'arr_0' (found {npz.files}).\n{K49_HOW}")
            return npz["arr_0"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise config_error(f"{str(path)!r} is not a readable npz file ({err}).\n{K49_HOW}") from None


def _k49_images(arr: np.ndarray, path: Path) -> Tensor:
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise config_error(f"{str(path)!r}: expected uint8 images of shape (N, H, W), got "
                          f"{arr.dtype} {arr.shape}.\n{K49_HOW}")
    return torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(1)  # (N, 1, 28, 28) uint8


def check_k49_files(root: str | None) -> Path:
    """The K49 folder, after checking that its four npz files are there."""
    base = _need_root(root, "k49", K49_HOW)
    missing = [f for f in K49_FILES if not (base / f).is_file()]
    if missing:
        raise config_error(f"dataset.root {str(base)!r} lacks {', '.join(missing)}.\n{K49_HOW}")
    return base


@SOURCES.register("k49")
def load_k49(*, root: str | None, image_size: int | None = None) -> SourcePools:
    """Kuzushiji-49: 49 classes, 28x28 grey, 232,365 train / 38,547 test (default size 28)."""
    base = check_k49_files(root)
    pools = {}
    for split in ("train", "test"):
        img_path, lab_path = base / f"k49-{split}-imgs.npz", base / f"k49-{split}-labels.npz"
        x = _k49_images(_read_npz(img_path), img_path)
        pools[split] = (x, _labels(_read_npz(lab_path), x.shape[0], 49, str(lab_path)))
    return SourcePools("k49", *pools["train"], *pools["test"], num_classes=49,
                       image_size=image_size or 28, default_max_per_class=4800)


describe_source("k49", size=28, check_files=check_k49_files)


# ---------------------------------------------------------------------------------------------
# cifar10 / cifar100: the python pickle batches (as torchvision downloads and reads them)


def _cifar_how(name: str, folder: str, train: list[str], test: list[str]) -> str:
    cls = "CIFAR10" if name == "cifar10" else "CIFAR100"
    return (f"Source {name!r} expects the official python version in dataset.root/{folder}/ "
            f"(or dataset.root pointing at that folder): {', '.join(train + test)} (pickled dicts "
            f"with b'data' uint8 (N, 3072) and labels). Get it with torchvision.datasets.{cls}(root, "
            f"download=True) or extract {name.replace('cifar', 'cifar-')}-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into dataset.root.")


def _read_cifar_batch(path: Path, label_key: bytes, how: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise config_error(f"missing file {str(path)!r}.\n{how}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data, labels = d[b"data"], d[label_key]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise config_error(f"{str(path)!r} is not a CIFAR python batch with b'data' and "
                          f"{label_key!r} ({type(err).__name__}: {err}).\n{how}") from None
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise config_error(f"{str(path)!r}: b'data' must be uint8 of shape (N, 3072), got "
                          f"{data.dtype} {data.shape}.\n{how}")
    return data, np.asarray(labels)


def _check_cifar_files(name: str, root: str | None, folder: str, train: list[str], test: list[str]) -> Path:
    """The folder holding the CIFAR batches, after checking that they are all there."""
    how = _cifar_how(name, folder, train, test)
    base = _need_root(root, name, how)
    if (base / folder).is_dir():
        base = base / folder
    missing = [f for f in train + test if not (base / f).is_file()]
    if missing:
        raise config_error(f"{str(base)!r} lacks {', '.join(missing)}.\n{how}")
    return base


def _load_cifar(name: str, root: str | None, image_size: int | None, folder: str, train: list[str],
                test: list[str], label_key: bytes, num_classes: int, max_per_class: int) -> SourcePools:
    how = _cifar_how(name, folder, train, test)
    base = _check_cifar_files(name, root, folder, train, test)
    pools = []
    for files in (train, test):
        parts = [_read_cifar_batch(base / f, label_key, how) for f in files]
        data = np.concatenate([p[0] for p in parts])
        x = torch.from_numpy(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        y = _labels(np.concatenate([p[1] for p in parts]), x.shape[0], num_classes, str(base / files[0]))
        pools += [x, y]
    return SourcePools(name, *pools, num_classes=num_classes, image_size=image_size or 32,
                       default_max_per_class=max_per_class)


CIFAR10_FILES = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
CIFAR100_FILES = ("cifar-100-python", ["train"], ["test"])


@SOURCES.register("cifar10")
def load_cifar10(*, root: str | None, image_size: int | None = None) -> SourcePools:
    """CIFAR-10: 10 classes, 32x32 RGB, 50,000 train / 10,000 test (default size 32)."""
    return _load_cifar("cifar10", root, image_size, *CIFAR10_FILES, b"labels", 10, 5000)


@SOURCES.register("cifar100")
def load_cifar100(*, root: str | None, image_size: int | None = None) -> SourcePools:
    """CIFAR-100 (fine labels): 100 classes, 32x32 RGB, 50,000 train / 10,000 test (default size 32)."""
    return _load_cifar("cifar100", root, image_size, *CIFAR100_FILES, b"fine_labels", 100, 500)


describe_source("cifar10", size=32, check_files=lambda root: _check_cifar_files("cifar10", root, *CIFAR10_FILES))
describe_source("cifar100", size=32, check_files=lambda root: _check_cifar_files("cifar100", root, *CIFAR100_FILES))


# ---------------------------------------------------------------------------------------------
# gtsrb: German Traffic Sign Recognition Benchmark, torchvision's folder layout

GTSRB_CLASSES = 43
GTSRB_HOW = ("Source 'gtsrb' expects torchvision's GTSRB layout under dataset.root: "
             "gtsrb/GTSRB/Training/<class 00000..00042>/*.ppm (train), gtsrb/GTSRB/Final_Test/Images/*.ppm "
             "(test) and gtsrb/GT-final_test.csv (semicolon-separated, columns Filename and ClassId). "
             "Get it with torchvision.datasets.GTSRB(root, split='train', download=True) and "
             "GTSRB(root, split='test', download=True), or from https://benchmark.ini.rub.de/.")


def _read_ppm(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            # Sign photos vary from 15 to 250 pixels a side: resize each to the common size on read.
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)  # (S, S, 3)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on broken files
        raise config_error(f"{str(path)!r} is not a readable image ({err}).\n{GTSRB_HOW}") from None


def _stack_ppms(paths: list[Path], size: int) -> Tensor:
    if not paths:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    arr = np.stack([_read_ppm(p, size) for p in paths])  # (N, S, S, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def check_gtsrb_files(root: str | None) -> tuple[Path, Path, Path]:
    """GTSRB's train folder, test folder and test label CSV, after checking they are there."""
    base = _need_root(root, "gtsrb", GTSRB_HOW)
    if (base / "gtsrb").is_dir() or not (base / "GTSRB").is_dir():
        base = base / "gtsrb"  # else root named the gtsrb folder itself
    train_dir, test_dir = base / "GTSRB" / "Training", base / "GTSRB" / "Final_Test" / "Images"
    csv_path = base / "GT-final_test.csv"
    for p in (train_dir, test_dir):
        if not p.is_dir():
            raise config_error(f"missing folder {str(p)!r}.\n{GTSRB_HOW}")
    if not csv_path.is_file():
        raise config_error(f"missing file {str(csv_path)!r}.\n{GTSRB_HOW}")
    return train_dir, test_dir, csv_path


@SOURCES.register("gtsrb")
def load_gtsrb(*, root: str | None, image_size: int | None = None) -> SourcePools:
    """GTSRB: 43 classes, RGB photos of varying size resized to image_size (default 32).

    Train labels come from the class folder names (00000..00042), test labels from the ClassId
    column of GT-final_test.csv, exactly as torchvision.datasets.GTSRB reads them.
    """
    size = image_size or 32
    train_dir, test_dir, csv_path = check_gtsrb_files(root)

    train_paths, train_labels = [], []
    for d in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        if not (d.name.isdigit() and int(d.name) < GTSRB_CLASSES):
            raise config_error(f"unexpected class folder {str(d)!r}: names must be 00000..00042.\n{GTSRB_HOW}")
        files = sorted(f for f in d.iterdir() if f.suffix.lower() == ".ppm")
        train_paths += files
        train_labels += [int(d.name)] * len(files)
    if not train_paths:
        raise config_error(f"no .ppm images in the class folders of {str(train_dir)!r}.\n{GTSRB_HOW}")

    test_paths, test_labels = [], []
    try:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f, delimiter=";", skipinitialspace=True):
                test_paths.append(test_dir / row["Filename"])
                test_labels.append(int(row["ClassId"]))
    except (KeyError, TypeError, ValueError) as err:
        raise config_error(f"{str(csv_path)!r} must be semicolon-separated with columns Filename and "
                          f"ClassId ({type(err).__name__}: {err}).\n{GTSRB_HOW}") from None
    missing = [p.name for p in test_paths if not p.is_file()]
    if missing:
        raise config_error(f"{len(missing)} test images named in {str(csv_path)!r} are missing from "
                          f"{str(test_dir)!r} (first: {missing[0]}).\n{GTSRB_HOW}")

    x_train, x_test = _stack_ppms(train_paths, size), _stack_ppms(test_paths, size)
    y_train = _labels(train_labels, len(train_paths), GTSRB_CLASSES, str(train_dir))
    y_test = _labels(test_labels, len(test_paths), GTSRB_CLASSES, str(csv_path))
    return SourcePools("gtsrb", x_train, y_train, x_test, y_test, num_classes=GTSRB_CLASSES,
                       image_size=size, default_max_per_class=None)


describe_source("gtsrb", size=32, check_files=check_gtsrb_files)
