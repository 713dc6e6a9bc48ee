"""Offline image datasets for the vision experiments (E1-E3), loaded from the shared zips.

Data layout (see ``shared/data/README.md``): one zip per dataset plus ``manifest.json``; zip entries are
``<split>/<class_index:03d>_<class_name>/<image_id>.<ext>``, stored sorted by name. Every image is
returned as 3 x 32 x 32 uint8 (grayscale replicated to 3 channels; other sizes resized with PIL
bilinear, which is antialiased when it shrinks), so all tasks share one input format.

Where the data lives
    ``root`` argument, else the ``TVTHEORY_DATA`` environment variable, else :func:`default_data_root`:
    ``<checkout>/../shared/data`` when this package runs from a repository checkout (the folder with
    ``pyproject.toml`` above ``tvtheory/``; so a clean clone placed beside ``shared/`` works without
    configuration), and ``../shared/data`` relative to the working directory for an installed copy
    (``pip install .``), which has no checkout to be relative to.

Decoded-array cache
    Decoding the 50,000 CIFAR-10 train JPEGs takes ~10 s, so each decoded split is cached as ``.npz``
    under ``TVTHEORY_CACHE`` (default ``~/.cache/tvtheory``), keyed by dataset, split, the zip's
    sha256 and the image size. Files are written atomically (temporary file, then ``os.replace``).

The seven tasks and what they stand in for
    The paper (arXiv 2508.16082) finetunes CLIP ViTs on Cars, DTD, EuroSAT, GTSRB, MNIST, RESISC45,
    SUN397 and SVHN. Offline we have seven small real datasets; each task plays the role of:

    ================  ==========================================  ====================================
    task              data                                        stands in for (paper benchmark)
    ================  ==========================================  ====================================
    ``cifar10``       CIFAR-10, classes dog frog horse ship truck SUN397: generic natural images, close
                                                                  to the pretraining distribution (the
                                                                  other 5 CIFAR classes)
    ``cars``          Stanford Cars, 196 classes, 64 -> 32 px     Cars (same data, fine-grained)
    ``dtd10``         DTD, 10 of 47 texture classes, 64 -> 32 px  DTD (same data, textures)
    ``gtsrb``         GTSRB traffic signs, 43 classes             GTSRB (same data)
    ``mnist``         MNIST, 5,000-image subset                   MNIST (same data)
    ``fashion_mnist`` Fashion-MNIST, 10 clothing classes          SVHN: the second 10-class grayscale
                                                                  shape task in MNIST format, far from
                                                                  the pretraining images
    ``animal_mnist``  Animal-MNIST silhouettes, 10 classes        EuroSAT / RESISC45: out-of-domain
                                                                  10-class task (no remote-sensing
                                                                  data is reachable offline)
    ================  ==========================================  ====================================

    Pretraining (:data:`PRETRAIN_TASK`) uses the *other* five CIFAR-10 classes (airplane, automobile,
    bird, cat, deer), supervised, so no finetuning task's images are seen during pretraining.
    Seven tasks instead of eight: SUN397, EuroSAT and RESISC45 have no offline copy; their roles
    are covered by the cifar10 subset and animal_mnist, and SVHN's by fashion_mnist.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io import atomic_path

#: Per-channel RGB mean and std of the CIFAR-10 training set (pixel values scaled to [0, 1]), the
#: usual published values. One fixed normalisation is used for every task, as CLIP does.
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
_ENTRY_RE = re.compile(r"^(train|test)/(\d{3})_([a-z0-9_]+)/([^/]+)$")
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message names the problem and how to fix it."""


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A classification task: a dataset and an optional class subset (None = all classes)."""

    name: str
    dataset: str
    classes: tuple[str, ...] | None = None


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cifar10", "cifar10", ("dog", "frog", "horse", "ship", "truck")),
        Task("cars", "cars"),
        Task("dtd10", "dtd10"),
        Task("fashion_mnist", "fashion_mnist"),
        Task("gtsrb", "gtsrb"),
        Task("mnist", "mnist"),
        Task("animal_mnist", "animal_mnist"),
    )
}

#: Supervised pretraining task: the five CIFAR-10 classes that no finetuning task uses.
PRETRAIN_TASK = Task("cifar5_pretrain", "cifar10", ("airplane", "automobile", "bird", "cat", "deer"))

#: Which of the paper's benchmarks each task stands in for (see the module docstring table).
PAPER_BENCHMARK_STANDINS: dict[str, str] = {
    "cifar10": "SUN397 (generic natural images)",
    "cars": "Cars",
    "dtd10": "DTD",
    "gtsrb": "GTSRB",
    "mnist": "MNIST",
    "fashion_mnist": "SVHN (second 10-class shape task in MNIST format)",
    "animal_mnist": "EuroSAT / RESISC45 (out-of-domain 10-class task)",
}


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name`` (one of :data:`TASKS` or the pretraining task)."""
    if name == PRETRAIN_TASK.name:
        return PRETRAIN_TASK
    if name not in TASKS:
        known = ", ".join(list(TASKS) + [PRETRAIN_TASK.name])
        raise DatasetError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[name]


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


#: Where the data folder is looked for when neither ``root`` nor ``TVTHEORY_DATA`` is given (help texts say it).
DATA_ROOT_DEFAULT = ("$TVTHEORY_DATA, else ../shared/data beside the repository checkout (an installed copy: "
                     "../shared/data relative to the working directory)")


def checkout_root() -> Path | None:
    """The repository checkout this package runs from (``pyproject.toml`` above ``tvtheory/``), or None when
    it is an installed copy (site-packages has no ``pyproject.toml`` there).
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def default_data_root() -> tuple[Path, str]:
    """(data folder, how it was found) without ``root`` or ``TVTHEORY_DATA``: ``<checkout>/../shared/data``
    for a repository checkout, else ``../shared/data`` relative to the working directory.
    """
    checkout = checkout_root()
    if checkout is not None:
        return checkout.parent / "shared" / "data", f"the default beside the checkout {checkout}"
    return Path.cwd().parent / "shared" / "data", "the default ../shared/data relative to the working directory"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory (argument > ``TVTHEORY_DATA`` > :func:`default_data_root`); must exist."""
    if root is not None:
        path, origin = Path(root), "the root argument"
    elif os.environ.get("TVTHEORY_DATA"):
        path, origin = Path(os.environ["TVTHEORY_DATA"]), "TVTHEORY_DATA"
    else:
        path, origin = default_data_root()
    path = path.expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"data directory {path} (from {origin}) does not exist; set TVTHEORY_DATA or pass "
            "--data-root / root= to the folder holding manifest.json and the dataset zips"
        )
    return path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache directory for decoded arrays (argument > ``TVTHEORY_CACHE`` > ``~/.cache/tvtheory``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TVTHEORY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tvtheory"


# --------------------------------------------------------------------------------------------
# Manifest and integrity
# --------------------------------------------------------------------------------------------


def load_manifest(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """Read ``manifest.json`` under the data root; returns ``{dataset name: dataset entry}``."""
    path = data_root(root) / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"no manifest.json in {path.parent}; is this the shared data folder?")
    try:
        raw = json.loads(path.read_text())
        return {d["name"]: d for d in raw["datasets"]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path} is not a valid manifest ({e!r}): expected {{'datasets': [{{'name': ...}}]}}") from e


def dataset_info(dataset: str, root: str | os.PathLike | None = None) -> dict:
    """The manifest entry of ``dataset``; unknown names list the known ones."""
    manifest = load_manifest(root)
    if dataset not in manifest:
        raise DatasetError(f"unknown dataset {dataset!r}; known datasets: {', '.join(manifest)}")
    return manifest[dataset]


@functools.lru_cache(maxsize=64)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; memoised per process on (path, size, mtime) so each zip is hashed once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _zip_path(info: dict, root: Path, verify: bool) -> Path:
    """Path of the dataset zip, checked to exist and (if ``verify``) to match the manifest sha256."""
    path = root / info["file"]
    if not path.is_file():
        raise DatasetError(
            f"dataset {info['name']!r}: zip file {path} is missing; restore it from the shared data "
            "folder or point TVTHEORY_DATA / --data-root to a folder that has it"
        )
    if verify:
        st = path.stat()
        got = _sha256_file(str(path.resolve()), st.st_size, st.st_mtime_ns)
        if got != info["sha256"]:
            raise DatasetError(
                f"dataset {info['name']!r}: sha256 of {path} is {got}, manifest says {info['sha256']}: "
                "corrupt or modified file; restore the original zip"
            )
    return path


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


_GRAY_MODES = ("L", "1", "I", "I;16", "F", "LA")


def _to_array(im: Image.Image, image_size: int, mode: str | None = None) -> np.ndarray:
    """PIL image -> uint8 (C, S, S), C = 1 for mode "L" or 3 for "RGB", resized bilinear if needed.

    ``mode=None`` keeps grayscale images grayscale and converts everything else (RGBA, P, CMYK,
    ...) to RGB; alpha is dropped.
    """
    if mode is None:
        mode = "L" if im.mode in _GRAY_MODES else "RGB"
    if im.mode != mode:
        im = im.convert(mode)
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _to_rgb(x: np.ndarray) -> np.ndarray:
    """(N, 1 or 3, S, S) -> (N, 3, S, S), replicating a single channel."""
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


def _decode_zip_split(zpath: Path, info: dict, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode all images of one split, in zip order: uint8 (N, C, S, S) and int64 labels (N,)."""
    channels = int(info["channels"])
    mode = "L" if channels == 1 else "RGB"
    classes = list(info["classes"])
    xs: list[np.ndarray] = []
    ys: list[int] = []
    with zipfile.ZipFile(zpath) as zf:
        for name in zf.namelist():
            if name.endswith("/") or not name.startswith(split + "/"):
                continue
            m = _ENTRY_RE.match(name)
            if m is None:
                raise DatasetError(f"{zpath}: unexpected entry {name!r} (expected <split>/<NNN>_<class>/<id>.<ext>)")
            label, cname = int(m.group(2)), m.group(3)
            if label >= len(classes) or classes[label] != cname:
                raise DatasetError(f"{zpath}: entry {name!r} disagrees with the manifest class list")
            with Image.open(io.BytesIO(zf.read(name))) as im:
                xs.append(_to_array(im, image_size, mode))
            ys.append(label)
    expected = info.get("splits", {}).get(split)
    if expected is not None and len(ys) != expected:
        raise DatasetError(f"{zpath}: split {split!r} has {len(ys)} images, manifest says {expected}")
    if not xs:
        return np.zeros((0, channels, image_size, image_size), np.uint8), np.zeros(0, np.int64)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _cache_file(cache: Path, dataset: str, split: str, sha256: str, image_size: int) -> Path:
    return cache / f"{dataset}_{split}_{sha256[:16]}_{image_size}px_v{_CACHE_FORMAT}.npz"


def _read_cache(path: Path, sha256: str, image_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached arrays, or None when the file is absent, unreadable or for other data."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["sha256"]) != sha256 or int(z["image_size"]) != image_size:
                return None
            return z["x"], z["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray, sha256: str, image_size: int) -> None:
    """Write the arrays atomically: a temporary file in the same folder, then os.replace."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a file object: np.savez would append .npz to a name
        np.savez(f, x=x, y=y, sha256=np.asarray(sha256), image_size=np.asarray(image_size))


def _class_indices(info: dict, classes: Sequence[str]) -> list[int]:
    """Manifest indices of the requested class names (in the requested order)."""
    known = list(info["classes"])
    if len(set(classes)) != len(classes):
        raise DatasetError(f"dataset {info['name']!r}: duplicate class names in {list(classes)}")
    out = []
    for c in classes:
        if c not in known:
            shown = ", ".join(known[:50]) + (" ..." if len(known) > 50 else "")
            raise DatasetError(f"dataset {info['name']!r} has no class {c!r}; its classes: {shown}")
        out.append(known.index(c))
    return out


def load_split(
    dataset: str,
    split: str,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    image_size: int = 32,
    verify: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset as ``(x, y)``.

    Args:
        dataset: a manifest name (``cifar10``, ``gtsrb``, ``dtd10``, ``cars``, ``mnist``, ...).
        split: ``"train"`` or ``"test"``.
        root: data folder (default: ``TVTHEORY_DATA``, else :func:`default_data_root`).
        classes: keep only these class names; labels become their positions in this list
            (0..C-1). None keeps every class with the manifest labels.
        image_size: output side S; images of another size are resized with PIL bilinear.
        verify: check the zip's sha256 against the manifest (once per process and file).
        cache: read/write the decoded split under :func:`cache_root` (``cache_dir`` overrides it).

    Returns:
        ``x``: uint8 tensor (N, 3, S, S), grayscale replicated to 3 channels; ``y``: int64 (N,).
        Order is the zip order (sorted by class folder, then image id).
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {SPLITS}")
    if image_size <= 0:
        raise DatasetError(f"image_size must be positive, got {image_size}")
    root_path = data_root(root)
    info = dataset_info(dataset, root_path)
    keep = _class_indices(info, classes) if classes is not None else None
    zpath = _zip_path(info, root_path, verify)

    arrays = None
    cpath = _cache_file(cache_root(cache_dir), dataset, split, info["sha256"], image_size) if cache else None
    if cpath is not None:
        arrays = _read_cache(cpath, info["sha256"], image_size)
    if arrays is None:
        arrays = _decode_zip_split(zpath, info, split, image_size)
        if cpath is not None:
            _write_cache(cpath, *arrays, info["sha256"], image_size)
    x, y = arrays

    if keep is not None:
        remap = np.full(len(info["classes"]), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        mask = remap[y] >= 0
        x, y = x[mask], remap[y[mask]]
    return torch.from_numpy(np.ascontiguousarray(_to_rgb(x))), torch.from_numpy(np.ascontiguousarray(y))


def load_task(
    task: str | Task,
    split: str,
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    verify: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_split` for a task of :data:`TASKS` (or :data:`PRETRAIN_TASK`), by name or object."""
    t = get_task(task) if isinstance(task, str) else task
    return load_split(
        t.dataset, split, root=root, classes=t.classes, image_size=image_size,
        verify=verify, cache=cache, cache_dir=cache_dir,
    )


# --------------------------------------------------------------------------------------------
# Splits and normalisation
# --------------------------------------------------------------------------------------------


def train_val_split(n: int, fraction: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of ``range(n)`` into (train, validation) index tensors, both sorted.

    The validation part has ``round(fraction * n)`` indices (at least 1 when ``fraction > 0`` and
    ``n >= 2``), drawn with ``numpy.random.default_rng(seed)``. Same (n, fraction, seed), same split.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(perm[:n_val])
    train = np.sort(perm[n_val:])
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64))


def normalize(
    x: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """uint8 images (N, 3, H, W) in [0, 255] -> float ``(x / 255 - mean) / std`` per channel.

    The default statistics are CIFAR-10's (:data:`MEAN`, :data:`STD`); an encoder pretrained with others
    (CLIP's, :data:`tvtheory.vision.clip.CLIP_MEAN`) passes its own.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"normalize expects (N, 3, H, W), got {tuple(x.shape)}")
    m = torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype).view(1, 3, 1, 1)
    return (x.to(dtype) / 255.0 - m) / s


# --------------------------------------------------------------------------------------------
# Real datasets in folders (no torchvision needed)
# --------------------------------------------------------------------------------------------


def load_image_folder(
    path: str | os.PathLike, image_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a ``<path>/<class>/<image>`` tree (torchvision ImageFolder layout) with PIL only.

    Classes are the sub-directory names in sorted order (label = position); images are the files
    with an image extension, sorted by name. Returns ``(x uint8 (N, 3, S, S), y int64 (N,), classes)``.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; expected <root>/<class>/<image> files")
    classes = _class_folders(root)
    if not classes:
        raise DatasetError(f"image folder {root} has no class sub-directories; expected <root>/<class>/<image>")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, cname in enumerate(classes):
        for f in _image_files(root / cname):
            try:
                with Image.open(f) as im:
                    xs.append(_to_rgb(_to_array(im, image_size)[None])[0])
            except OSError as e:
                raise DatasetError(f"cannot read image {f}: {e}") from e
            ys.append(label)
    if not xs:
        raise DatasetError(f"image folder {root} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), classes


def load_folder_task(
    path: str | os.PathLike, image_size: int = 32
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """A task stored as ``<path>/train/<class>/<image>`` and ``<path>/test/<class>/<image>``.

    Both splits are read with :func:`load_image_folder` and must have the same class folders (label =
    position in the sorted class names). Returns ``((x, y) train, (x, y) test, classes)``.
    """
    root = Path(path).expanduser()
    classes = check_folder_task(root)
    x, y, _ = load_image_folder(root / "train", image_size)
    xt, yt, _ = load_image_folder(root / "test", image_size)
    return (x, y), (xt, yt), classes


def _image_files(folder: Path) -> list[Path]:
    """The image files of one class folder (by extension), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(split: Path) -> list[str]:
    """The class sub-folder names of a split folder, sorted (hidden folders left out)."""
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_folder_task(path: str | os.PathLike) -> list[str]:
    """The class names of a ``<path>/{train,test}/<class>/<image>`` task, checked without decoding an image.

    Refuses (:class:`DatasetError`, naming the folder): a missing ``train`` or ``test`` folder, a split without
    class folders, class folders that differ between the splits, and a training class folder without images
    (a class the probe and the finetuning could not learn, yet counted in the accuracy).
    """
    root = Path(path).expanduser()
    train, test = root / "train", root / "test"
    if not (train.is_dir() and test.is_dir()):
        raise DatasetError(f"task folder {root}: no folders {train} and {test}; expected "
                           "PATH/train/<class>/<image> and PATH/test/<class>/<image>")
    classes, test_classes = _class_folders(train), _class_folders(test)
    if not classes:
        raise DatasetError(f"image folder {train} has no class sub-directories; expected {train}/<class>/<image>")
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DatasetError(
            f"the class folders of {train} and {test} differ (only in train: {only_train}, "
            f"only in test: {only_test}); both splits need the same <class> folders"
        )
    empty = [c for c in classes if not _image_files(train / c)]
    if empty:
        raise DatasetError(f"the training class folder {train / empty[0]} has no images "
                           f"({', '.join(IMAGE_EXTENSIONS)}); every class needs training images: add some "
                           f"or remove the folder{'s ' + ', '.join(empty) if len(empty) > 1 else ''}")
    return classes
