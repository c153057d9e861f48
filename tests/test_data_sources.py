"""Sources: each loader reads tiny files written here in the official format, and a missing or
malformed folder fails with a ConfigError that names the expected files."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from git_ray.config import ConfigError
from git_ray.registry import SOURCES

FILE_SOURCES = [n for n in SOURCES.names() if n not in ("digits", "glyphs")]  # these read no files
EXPECTED_NAMES = {  # a file or folder name each source's error message must mention
    "k49": "k49-train-imgs.npz", "cifar10": "data_batch_1", "cifar100": "cifar-100-python",
    "gtsrb": "GT-final_test.csv",
}


# --- writers for the official formats ---------------------------------------------------------


def write_k49(root: Path, n_train: int = 98, n_test: int = 49, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "k49-train-imgs.npz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "k49-train-labels.npz": (np.arange(n_train) % 49).astype(np.uint8),
        "k49-test-imgs.npz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "k49-test-labels.npz": (np.arange(n_test) % 49).astype(np.uint8),
    }
    for name, arr in arrays.items():
        np.savez(root / name, arr)  # positional array -> key arr_0, as the official files
    return arrays


def write_cifar(root: Path, name: str, per_batch: int = 4, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, key, classes = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True)
    batches = {}
    for f in files:
        d = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             key: [int(v) for v in rng.integers(0, classes, per_batch)], b"batch_label": b"x"}
        if name == "cifar100":
            d[b"coarse_labels"] = [0] * per_batch
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh)
        batches[f] = d
    meta_name = "batches.meta" if name == "cifar10" else "meta"
    with open(folder / meta_name, "wb") as fh:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(classes)]}, fh)
    return batches


def write_gtsrb(root: Path, classes=(0, 1, 2), per_class: int = 2) -> dict:
    base = root / "gtsrb"
    train = base / "GTSRB" / "Training"
    colours = {}
    for c in classes:
        d = train / f"{c:05d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            colour = (10 * c + i, 100 + c, 200 - i)
            colours[(c, i)] = colour
            # signs come in many sizes; the loader resizes each
            Image.new("RGB", (20 + 7 * i, 25 + 3 * c), colour).save(d / f"{i:05d}_00000.ppm")
        (d / f"GT-{c:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows, test_labels = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"], []
    for i, c in enumerate([2, 0, 1, 2]):
        Image.new("RGB", (30, 31), (c, c, c)).save(test / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;30;31;5;5;25;26;{c}")
        test_labels.append(c)
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return {"colours": colours, "test_labels": test_labels}


# --- shared behaviour over every file-backed source -------------------------------------------


@pytest.mark.parametrize("name", FILE_SOURCES)
def test_missing_root_and_empty_folder_name_the_expected_files(name, tmp_path):
    with pytest.raises(ConfigError, match="dataset.root is not set") as err:
        SOURCES.build(name, root=None, image_size=None)
    assert EXPECTED_NAMES[name] in str(err.value)
    with pytest.raises(ConfigError) as err:
        SOURCES.build(name, root=str(tmp_path / "nope"), image_size=None)
    assert "not a folder" in str(err.value) and EXPECTED_NAMES[name] in str(err.value)
    with pytest.raises(ConfigError) as err:
        SOURCES.build(name, root=str(tmp_path), image_size=None)
    assert EXPECTED_NAMES[name] in str(err.value)
    assert "download=True" in str(err.value) or "http" in str(err.value)  # says where to get it


# --- digits -----------------------------------------------------------------------------------


def test_digits_bundled_upsampled():
    pools = SOURCES.build("digits", root=None, image_size=None)
    assert pools.x_train.shape == (1797, 1, 16, 16) and pools.x_test is None
    assert pools.num_classes == 10 and pools.channels == 1 and pools.image_size == 16
    assert torch.equal(torch.bincount(pools.y_train), torch.bincount(pools.y_train, minlength=10))
    x = pools.images("train")
    assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() <= 1.0 and x.max() > 0.9
    assert (x == 0).float().mean() > 0.25  # exact-zero background survives the upsampling
    assert SOURCES.build("digits", root=None, image_size=24).images("train", [0, 1]).shape == (2, 1, 24, 24)


# --- k49 --------------------------------------------------------------------------------------


def test_k49_reads_official_npz(tmp_path):
    arrays = write_k49(tmp_path)
    pools = SOURCES.build("k49", root=str(tmp_path), image_size=None)
    assert pools.num_classes == 49 and pools.channels == 1 and pools.image_size == 28
    assert pools.x_train.shape == (98, 1, 28, 28) and pools.x_test.shape == (49, 1, 28, 28)
    assert torch.equal(pools.y_train, torch.from_numpy(arrays["k49-train-labels.npz"].astype(np.int64)))
    x = pools.images("test", [3, 4])
    assert torch.allclose(x[:, 0], torch.from_numpy(arrays["k49-test-imgs.npz"][3:5]).float() / 255)
    assert pools.images("train", [0]).dtype == torch.float32
    small = SOURCES.build("k49", root=str(tmp_path), image_size=14)
    assert small.images("train", [0, 1, 2]).shape == (3, 1, 14, 14)


def test_k49_missing_file_names_all_four(tmp_path):
    write_k49(tmp_path)
    (tmp_path / "k49-test-labels.npz").unlink()
    with pytest.raises(ConfigError, match="lacks k49-test-labels.npz") as err:
        SOURCES.build("k49", root=str(tmp_path), image_size=None)
    for f in ("k49-train-imgs.npz", "k49-train-labels.npz", "k49-test-imgs.npz", "k49-test-labels.npz"):
        assert f in str(err.value)


def test_k49_malformed_files(tmp_path):
    write_k49(tmp_path)
    np.savez(tmp_path / "k49-train-imgs.npz", images=np.zeros((98, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="arr_0"):
        SOURCES.build("k49", root=str(tmp_path), image_size=None)
    np.savez(tmp_path / "k49-train-imgs.npz", np.zeros((97, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="97 images"):
        SOURCES.build("k49", root=str(tmp_path), image_size=None)
    np.savez(tmp_path / "k49-train-imgs.npz", np.zeros((98, 28, 28), np.float32))
    with pytest.raises(ConfigError, match="uint8"):
        SOURCES.build("k49", root=str(tmp_path), image_size=None)
    (tmp_path / "k49-train-imgs.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a readable npz"):
        SOURCES.build("k49", root=str(tmp_path), image_size=None)
    write_k49(tmp_path)
    np.savez(tmp_path / "k49-test-labels.npz", np.full(49, 49, np.uint8))
    with pytest.raises(ConfigError, match="0..48"):
        SOURCES.build("k49", root=str(tmp_path), image_size=None)


# --- cifar ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_python_batches(name, tmp_path):
    batches = write_cifar(tmp_path, name)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test_file = "test_batch" if name == "cifar10" else "test"
    pools = SOURCES.build(name, root=str(tmp_path), image_size=None)
    assert pools.num_classes == (10 if name == "cifar10" else 100) and pools.channels == 3
    assert pools.x_train.shape == (4 * len(train_files), 3, 32, 32) and pools.x_test.shape == (4, 3, 32, 32)
    labels = sum((batches[f][key] for f in train_files), [])
    assert pools.y_train.tolist() == labels and pools.y_test.tolist() == batches[test_file][key]
    # rows hold the red plane, then green, then blue, each row-major 32x32
    row = batches[train_files[0]][b"data"][1]
    img = pools.images("train", [1])[0]
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 30)):
        assert img[c, h, w].item() == pytest.approx(row[c * 1024 + h * 32 + w] / 255)
    # root may also name the batches folder itself
    inner = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    assert torch.equal(SOURCES.build(name, root=str(inner), image_size=None).x_test, pools.x_test)
    assert SOURCES.build(name, root=str(tmp_path), image_size=16).images("test").shape == (4, 3, 16, 16)


def test_cifar_missing_and_malformed_batches(tmp_path):
    write_cifar(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").unlink()
    with pytest.raises(ConfigError, match="lacks test_batch") as err:
        SOURCES.build("cifar10", root=str(tmp_path), image_size=None)
    assert "data_batch_5" in str(err.value) and "cifar-10-batches-py" in str(err.value)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a CIFAR python batch"):
        SOURCES.build("cifar10", root=str(tmp_path), image_size=None)
    with open(folder / "test_batch", "wb") as fh:  # str keys instead of bytes keys
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(ConfigError, match="b'data'"):
        SOURCES.build("cifar10", root=str(tmp_path), image_size=None)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ConfigError, match="3072"):
        SOURCES.build("cifar10", root=str(tmp_path), image_size=None)


# --- gtsrb ------------------------------------------------------------------------------------


def test_gtsrb_reads_torchvision_layout(tmp_path):
    info = write_gtsrb(tmp_path)
    pools = SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
    assert pools.num_classes == 43 and pools.channels == 3 and pools.image_size == 32
    assert pools.default_max_per_class is None  # the largest class pool decides
    assert pools.x_train.shape == (6, 3, 32, 32) and pools.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert pools.y_test.tolist() == info["test_labels"]
    x = pools.images("train")
    for n, (c, i) in enumerate(sorted(info["colours"])):  # solid colours survive the resize
        colour = torch.tensor(info["colours"][(c, i)], dtype=torch.float32) / 255
        assert torch.allclose(x[n].mean((1, 2)), colour, atol=1e-6)
    assert SOURCES.build("gtsrb", root=str(tmp_path / "gtsrb"), image_size=20).x_test.shape == (4, 3, 20, 20)


def test_gtsrb_missing_and_malformed(tmp_path):
    write_gtsrb(tmp_path)
    csv_path = tmp_path / "gtsrb" / "GT-final_test.csv"
    text = csv_path.read_text()
    csv_path.unlink()
    with pytest.raises(ConfigError, match="GT-final_test.csv"):
        SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
    csv_path.write_text(text.replace(";", ","))
    with pytest.raises(ConfigError, match="ClassId"):
        SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
    csv_path.write_text(text + "09999.ppm;30;31;5;5;25;26;1\n")
    with pytest.raises(ConfigError, match="09999.ppm"):
        SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
    csv_path.write_text(text)
    (tmp_path / "gtsrb" / "GTSRB" / "Training" / "00001" / "00000_00000.ppm").write_bytes(b"P6 junk")
    with pytest.raises(ConfigError, match="not a readable image"):
        SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
    (tmp_path / "gtsrb" / "GTSRB" / "Training" / "extra").mkdir()
    with pytest.raises(ConfigError, match="00000..00042"):
        SOURCES.build("gtsrb", root=str(tmp_path), image_size=None)
