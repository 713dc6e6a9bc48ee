"""Pack a subset of the shared dataset zips into a small data folder for the GPU scale check (``make gpu-pack``).

The device tool copies only the working tree (64 MiB in all), so the GPU run cannot read ``../shared/data``
(126 MB). ``pack_data`` writes a folder with the same layout as the shared one (one zip per dataset plus
``manifest.json``), so ``tvtheory.vision.datasets.load_task(..., root=<folder>)`` reads it unchanged:

- each zip keeps only the images of the classes its task uses (cifar10: the five task classes; the other
  five are the pretraining classes), at most ``caps[dataset] = (train, test)`` of them per split: a seeded
  random subset (``seed``), in the original zip order; the image files are copied byte for byte (no
  re-encoding), stored uncompressed (JPEG and PNG are compressed already);
- the manifest entry is the shared one with ``splits``, ``class_counts``, ``sha256`` and ``bytes`` of the
  packed zip, and ``native_splits`` (the task's image counts before the caps) so a result can say what was capped.

``DEFAULT_CAPS`` keeps dtd10, mnist, fashion_mnist and animal_mnist whole and caps cifar10, gtsrb and cars so
that the folder stays under ``DEFAULT_MAX_MIB`` (measured: 48.0 MiB); a pack over ``max_mib`` is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_json_atomic

#: (train, test) images kept per dataset; None = all. dtd10 and the three MNIST-format datasets are kept whole.
DEFAULT_CAPS: Mapping[str, tuple[int | None, int | None]] = {
    "cifar10": (10000, 2000), "gtsrb": (10000, 2000), "cars": (3000, 800),
    "dtd10": (None, None), "mnist": (None, None), "fashion_mnist": (None, None), "animal_mnist": (None, None)}

#: The largest packed folder accepted (MiB): the device tool carries 64 MiB, the working tree included.
DEFAULT_MAX_MIB = 50.0

_ENTRY = re.compile(r"^(train|test)/(\d{3})_([a-z0-9_]+)/[^/]+$")


def _kept_entries(names: Sequence[str], split: str, keep_labels: set[int] | None, cap: int | None,
                  seed: int) -> tuple[list[str], int]:
    """(the entries of ``split`` whose label is kept, at most ``cap`` of them: a seeded subset in zip order;
    how many there were before the cap).
    """
    entries = [n for n in names if (m := _ENTRY.match(n)) and m.group(1) == split
               and (keep_labels is None or int(m.group(2)) in keep_labels)]
    if cap is None or len(entries) <= cap:
        return entries, len(entries)
    pick = np.sort(np.random.default_rng(seed).permutation(len(entries))[:cap])
    return [entries[i] for i in pick], len(entries)


def pack_data(source: str | Path, dest: str | Path, caps: Mapping[str, tuple[int | None, int | None]] = DEFAULT_CAPS,
              seed: int = 0, max_mib: float = DEFAULT_MAX_MIB) -> dict:
    """Write the packed folder ``dest`` from the shared data folder ``source`` (module docstring).

    Returns the packed manifest ({"datasets": [...], "packed": {...}}). ValueError naming the fix when a
    dataset of ``caps`` is not in the source manifest or the pack exceeds ``max_mib``.
    """
    from ..vision.datasets import TASKS, load_manifest

    source, dest = Path(source), Path(dest)
    manifest = load_manifest(source)
    unknown = sorted(set(caps) - set(manifest))
    if unknown:
        raise ValueError(f"caps name datasets {unknown} that {source}/manifest.json does not have; "
                         f"known: {', '.join(manifest)}")
    classes_of = {t.dataset: t.classes for t in TASKS.values()}
    dest.mkdir(parents=True, exist_ok=True)
    entries, total = [], 0
    for name, (train_cap, test_cap) in caps.items():
        info = dict(manifest[name])
        wanted = classes_of.get(name)
        keep = None if wanted is None else {list(info["classes"]).index(c) for c in wanted}
        with zipfile.ZipFile(source / info["file"]) as src:
            names = src.namelist()
            picked = {s: _kept_entries(names, s, keep, cap, seed) for s, cap in (("train", train_cap),
                                                                                ("test", test_cap))}
            kept = {s: es for s, (es, _) in picked.items()}
            target = dest / info["file"]
            with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
                for entry in sorted(kept["train"] + kept["test"]):
                    out.writestr(entry, src.read(entry))
        counts = {s: [0] * len(info["classes"]) for s in kept}
        for s, es in kept.items():
            for e in es:
                counts[s][int(e.split("/")[1][:3])] += 1          # <split>/<NNN>_<class>/<id>
        data = target.read_bytes()
        info.update(native_splits={s: n for s, (_, n) in picked.items()}, splits={s: len(es) for s, es in kept.items()},
                    class_counts=counts, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        entries.append(info)
        total += len(data)
    packed = {"source": str(source), "seed": seed, "caps": {k: list(v) for k, v in caps.items()},
              "total_bytes": total, "max_mib": max_mib}
    if total > max_mib * 2**20:
        raise ValueError(f"the packed data is {total / 2**20:.1f} MiB, over the {max_mib} MiB the device run can "
                         f"carry: lower the caps of cifar10 / gtsrb / cars ({dict(caps)})")
    out_manifest = {"datasets": entries, "packed": packed}
    write_json_atomic(dest / "manifest.json", out_manifest)
    return out_manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tvtheory.experiments.gpu_pack [--source DIR] [--dest gpu_data]``; exit 2 on bad input."""
    from ..vision.datasets import DatasetError, data_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="the shared data folder (default: TVTHEORY_DATA or ../shared/data)")
    p.add_argument("--dest", default="gpu_data", help="the packed folder to write (default: gpu_data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the capped subsets")
    p.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB, help="refuse a larger pack")
    a = p.parse_args(argv)
    try:
        out = pack_data(data_root(a.source), a.dest, seed=a.seed, max_mib=a.max_mib)
    except (ValueError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in out["datasets"]:
        print(f"{d['name']:>14}: train {d['splits']['train']:>6} of {d['native_splits']['train']:>6}, "
              f"test {d['splits']['test']:>5} of {d['native_splits']['test']:>5}, {d['bytes'] / 2**20:5.1f} MiB")
    print(f"{a.dest}: {out['packed']['total_bytes'] / 2**20:.1f} MiB; manifest {json.dumps(out['packed']['caps'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
