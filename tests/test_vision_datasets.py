"""Tests of tvtheory.vision.datasets on tiny zips built in tmp_path (plus one real-data test)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tvtheory.vision import datasets as ds
from tvtheory.vision.datasets import (
    MEAN,
    PAPER_BENCHMARK_STANDINS,
    PRETRAIN_TASK,
    STD,
    TASKS,
    DatasetError,
    load_image_folder,
    load_manifest,
    load_split,
    load_task,
    normalize,
    train_val_split,
)

RGB_CLASSES = ["red_ish", "green_ish", "blue_ish"]
GRAY_CLASSES = ["zero", "one"]


def _rgb_image(label: int, i: int, size: int = 64) -> np.ndarray:
    """A deterministic, non-constant RGB image (gradients differ per label and index)."""
    rng = np.random.default_rng(1000 * label + i)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _gray_image(label: int, i: int, size: int = 28) -> np.ndarray:
    rng = np.random.default_rng(5000 + 1000 * label + i)
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _write_zip(path: Path, entries: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), entries[name])
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Per split and class: number of images. rgbset: 64x64 RGB; grayset: 28x28 L.
RGB_COUNTS = {"train": [3, 2, 4], "test": [1, 2, 1]}
GRAY_COUNTS = {"train": [2, 3], "test": [1, 1]}


def _build(root: Path) -> Path:
    """Create manifest.json + rgbset.zip + grayset.zip under root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    specs = [("rgbset", RGB_CLASSES, RGB_COUNTS, _rgb_image, 3, 64),
             ("grayset", GRAY_CLASSES, GRAY_COUNTS, _gray_image, 1, 28)]
    entries_all = []
    for name, classes, counts, make, channels, size in specs:
        entries = {}
        for split, per_class in counts.items():
            offset = 0 if split == "train" else 100
            for c, n in enumerate(per_class):
                for i in range(n):
                    entries[f"{split}/{c:03d}_{classes[c]}/{i + offset:04d}.png"] = _png(make(c, i + offset))
        sha = _write_zip(root / f"{name}.zip", entries)
        entries_all.append({
            "name": name, "file": f"{name}.zip", "image_size": [size, size], "channels": channels,
            "num_classes": len(classes), "classes": classes,
            "splits": {s: sum(v) for s, v in counts.items()}, "sha256": sha,
        })
    (root / "manifest.json").write_text(json.dumps({"datasets": entries_all}))
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _build(tmp_path / "data")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _expected_rgb(label: int, i: int, size: int = 32) -> np.ndarray:
    im = Image.fromarray(_rgb_image(label, i)).resize((size, size), Image.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1)


# ----------------------------------------------------------------------------------------------


def test_manifest_and_split_shapes_labels_order(data, cache):
    assert set(load_manifest(data)) == {"rgbset", "grayset"}
    x, y = load_split("rgbset", "train", root=data, cache_dir=cache)
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]  # zip order
    # every image is the PIL-bilinear 64 -> 32 resize of its source, in zip order
    order = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 3)]
    for k, (c, i) in enumerate(order):
        np.testing.assert_array_equal(x[k].numpy(), _expected_rgb(c, i))
    xt, yt = load_split("rgbset", "test", root=data, cache_dir=cache)
    assert yt.tolist() == [0, 1, 1, 2]
    np.testing.assert_array_equal(xt[0].numpy(), _expected_rgb(0, 100))


def test_other_image_size(data, cache):
    x, _ = load_split("rgbset", "train", root=data, image_size=16, cache_dir=cache)
    assert x.shape == (9, 3, 16, 16)
    np.testing.assert_array_equal(x[0].numpy(), _expected_rgb(0, 0, size=16))


def test_class_subset_remaps_labels_in_given_order(data, cache):
    x_all, y_all = load_split("rgbset", "train", root=data, cache_dir=cache)
    x, y = load_split("rgbset", "train", root=data, classes=["blue_ish", "red_ish"], cache_dir=cache)
    assert y.tolist() == [1, 1, 1, 0, 0, 0, 0]  # red_ish -> 1, blue_ish -> 0, zip order kept
    keep = (y_all == 0) | (y_all == 2)
    assert torch.equal(x, x_all[keep])


def test_grayscale_replicated_and_resized(data, cache):
    x, y = load_split("grayset", "train", root=data, cache_dir=cache)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    expected = np.asarray(Image.fromarray(_gray_image(1, 0)).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(x[2, 0].numpy(), expected)


def test_cache_round_trip_and_reuse(data, cache, monkeypatch):
    x1, y1 = load_split("rgbset", "train", root=data, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz") and "rgbset_train" in files[0]
    assert not list(cache.glob("*.tmp"))

    def no_decode(*a, **k):
        raise AssertionError("the zip was decoded although a cache file exists")

    monkeypatch.setattr(ds, "_decode_zip_split", no_decode)
    x2, y2 = load_split("rgbset", "train", root=data, cache_dir=cache)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # a different image size is another cache key, so it must decode
    with pytest.raises(AssertionError, match="decoded"):
        load_split("rgbset", "train", root=data, image_size=16, cache_dir=cache)


def test_cache_dir_from_env(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TVTHEORY_CACHE", str(tmp_path / "envcache"))
    load_split("grayset", "test", root=data)
    assert len(list((tmp_path / "envcache").glob("grayset_test_*.npz"))) == 1


def test_no_cache_writes_nothing(data, cache):
    load_split("grayset", "test", root=data, cache=False, cache_dir=cache)
    assert not cache.exists()


def test_sha_mismatch(data, cache):
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["datasets"][0]["sha256"] = "0" * 64
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="corrupt or modified"):
        load_split("rgbset", "train", root=data, cache_dir=cache)
    load_split("rgbset", "train", root=data, cache_dir=cache, verify=False)  # opt-out works


def test_modified_zip_detected_after_first_load(data, cache):
    load_split("grayset", "train", root=data, cache_dir=cache)
    zpath = data / "grayset.zip"
    raw = bytearray(zpath.read_bytes())
    raw[-1] ^= 0xFF
    zpath.write_bytes(bytes(raw))
    st = zpath.stat()
    os.utime(zpath, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match="corrupt or modified"):
        load_split("grayset", "train", root=data, cache_dir=cache)


def test_missing_root(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="TVTHEORY_DATA") as e:
        load_split("rgbset", "train", root=missing)
    assert str(missing) in str(e.value) and "--data-root" in str(e.value)
    monkeypatch.setenv("TVTHEORY_DATA", str(missing))
    with pytest.raises(DatasetError, match="from TVTHEORY_DATA"):
        load_manifest()


def test_root_from_env_and_default(data, monkeypatch):
    monkeypatch.setenv("TVTHEORY_DATA", str(data))
    assert set(load_manifest()) == {"rgbset", "grayset"}
    monkeypatch.delenv("TVTHEORY_DATA")
    checkout = Path(ds.__file__).resolve().parents[2]
    assert ds.checkout_root() == checkout                       # the tests run from the checkout
    expected = checkout.parent / "shared" / "data"
    assert ds.default_data_root()[0] == expected
    if expected.is_dir():
        assert ds.data_root() == expected
    else:
        with pytest.raises(DatasetError, match=str(expected)):
            ds.data_root()


def test_default_root_of_an_installed_copy_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    """Without a checkout (site-packages has no pyproject.toml above tvtheory/) the default is ../shared/data
    relative to the working directory, not a path into the installed package."""
    monkeypatch.setattr(ds, "checkout_root", lambda: None)
    monkeypatch.delenv("TVTHEORY_DATA", raising=False)
    work = tmp_path / "work"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    path, origin = ds.default_data_root()
    assert path == work.parent / "shared" / "data" and "working directory" in origin
    assert ds.data_root().resolve() == (tmp_path / "shared" / "data").resolve()


def test_missing_zip(data, cache):
    (data / "grayset.zip").unlink()
    with pytest.raises(DatasetError, match="grayset.zip is missing"):
        load_split("grayset", "train", root=data, cache_dir=cache)


def test_unknown_names(data, cache):
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'.*rgbset, grayset"):
        load_split("svhn", "train", root=data, cache_dir=cache)
    with pytest.raises(DatasetError, match="no class 'purple'.*red_ish, green_ish, blue_ish"):
        load_split("rgbset", "train", root=data, classes=["purple"], cache_dir=cache)
    with pytest.raises(DatasetError, match="unknown split"):
        load_split("rgbset", "validation", root=data, cache_dir=cache)
    with pytest.raises(DatasetError, match="unknown task 'sun397'.*cifar10"):
        load_task("sun397", "train", root=data)


def test_task_definitions():
    assert list(TASKS) == ["cifar10", "cars", "dtd10", "fashion_mnist", "gtsrb", "mnist", "animal_mnist"]
    assert TASKS["cifar10"].classes == ("dog", "frog", "horse", "ship", "truck")
    assert PRETRAIN_TASK.dataset == "cifar10"
    assert PRETRAIN_TASK.classes == ("airplane", "automobile", "bird", "cat", "deer")
    assert not set(PRETRAIN_TASK.classes) & set(TASKS["cifar10"].classes)
    assert set(PAPER_BENCHMARK_STANDINS) == set(TASKS)


def test_train_val_split():
    tr, va = train_val_split(1000, 0.1, seed=3)
    assert len(va) == 100 and len(tr) == 900
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(1000))
    assert torch.equal(tr, tr.sort().values) and torch.equal(va, va.sort().values)
    tr2, va2 = train_val_split(1000, 0.1, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, train_val_split(1000, 0.1, seed=4)[1])
    assert len(train_val_split(5, 0.01)[1]) == 1  # at least one validation example
    with pytest.raises(ValueError):
        train_val_split(10, 1.0)


def test_normalize():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[1] = 255
    z = normalize(x)
    assert z.dtype == torch.float32
    for c in range(3):
        assert z[0, c].allclose(torch.tensor(-MEAN[c] / STD[c]))
        assert z[1, c].allclose(torch.tensor((1 - MEAN[c]) / STD[c]))
    assert normalize(x, torch.float64).dtype == torch.float64
    # the documented constants: CIFAR-10 train mean / std
    mid = normalize(torch.full((1, 3, 1, 1), 128, dtype=torch.uint8), torch.float64).flatten()
    expected = [(128 / 255 - m) / s for m, s in zip((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), strict=True)]
    assert torch.allclose(mid, torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(TypeError):
        normalize(x.float())
    other = normalize(x, torch.float64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))     # another encoder's
    assert other[1, :, 0, 0].tolist() == [2.0, 1.0, 0.5] and other[0, :, 0, 0].tolist() == [-2.0, -1.0, -0.5]


def test_load_image_folder(tmp_path):
    root = tmp_path / "folder"
    a = _rgb_image(0, 0, size=40)
    g = _gray_image(0, 0, size=40)
    (root / "b_class").mkdir(parents=True)
    (root / "a_class").mkdir()
    Image.fromarray(a).save(root / "b_class" / "1.png")
    Image.fromarray(g).save(root / "b_class" / "0.png")
    Image.fromarray(np.dstack([a, np.full((40, 40), 255, np.uint8)])).save(root / "a_class" / "x.png")  # RGBA
    (root / "a_class" / "notes.txt").write_text("not an image")
    x, y, classes = load_image_folder(root, image_size=32)
    assert classes == ["a_class", "b_class"]
    assert y.tolist() == [0, 1, 1] and x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    expected_rgb = np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(x[0].numpy(), expected_rgb)  # RGBA -> RGB
    np.testing.assert_array_equal(x[2].numpy(), expected_rgb)
    expected_gray = np.asarray(Image.fromarray(g).resize((32, 32), Image.BILINEAR))
    for c in range(3):
        np.testing.assert_array_equal(x[1, c].numpy(), expected_gray)
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


def test_load_folder_task(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for label, cname in enumerate(("b", "a")):
            (tmp_path / split / cname).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_rgb_image(label, i, size=40)).save(tmp_path / split / cname / f"{i}.png")
    (x, y), (xt, yt), classes = ds.load_folder_task(tmp_path, image_size=16)
    assert classes == ["a", "b"] and y.tolist() == [0, 0, 1, 1] and yt.tolist() == [0, 1]
    assert x.shape == (4, 3, 16, 16) and xt.shape == (2, 3, 16, 16)
    (tmp_path / "test" / "c").mkdir()
    Image.fromarray(_gray_image(0, 0)).save(tmp_path / "test" / "c" / "0.png")
    with pytest.raises(DatasetError, match=r"only in train: \[\], only in test: \['c'\]"):
        ds.load_folder_task(tmp_path)


def test_folder_task_with_an_empty_training_class_is_refused(tmp_path):
    """A class folder without training images would be a class the probe cannot learn: refused, named."""
    for split in ("train", "test"):
        for cname in ("a", "b"):
            (tmp_path / split / cname).mkdir(parents=True)
            if (split, cname) != ("train", "b"):
                Image.fromarray(_rgb_image(0, 0, size=8)).save(tmp_path / split / cname / "0.png")
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    for check in (ds.check_folder_task, ds.load_folder_task):
        with pytest.raises(DatasetError, match="has no images") as e:
            check(tmp_path)
        assert str(tmp_path / "train" / "b") in str(e.value)
    Image.fromarray(_rgb_image(1, 0, size=8)).save(tmp_path / "train" / "b" / "0.png")
    assert ds.check_folder_task(tmp_path) == ["a", "b"]
    with pytest.raises(DatasetError, match="no folders"):
        ds.check_folder_task(tmp_path / "train")


REAL_ROOT = ds.default_data_root()[0]


@pytest.mark.skipif(
    not (REAL_ROOT / "mnist.zip").is_file(),
    reason=f"real data not found: {REAL_ROOT / 'mnist.zip'} (only present beside the repo's shared/ folder)",
)
def test_real_mnist(tmp_path):
    x, y = load_split("mnist", "test", root=REAL_ROOT, cache_dir=tmp_path)
    assert x.shape == (1000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [100] * 10
    assert torch.equal(x[:, 0], x[:, 2])
    assert x.float().mean() < 60  # mostly black background, white digits
