"""Build the MNIST subset shipped in the package (``spikeep/_data/mnist_subset.npz``).

The subset is class-balanced and chosen without randomness: the first ``--train-per-class``
(1,000) training images of each digit and the first ``--test-per-class`` (200) test images of each
digit, in the order they appear in the IDX files, kept in that file order. The npz holds, for each
split, ``<split>_images`` (uint8, ``(n, 28, 28)``), ``<split>_labels`` (uint8, ``(n,)``) and
``<split>_index`` (uint16, ``(n,)``, the row of each image in the original file).

The output is reproducible byte for byte (given the same zlib): the zip entries carry a fixed
timestamp, are written in a fixed order and are deflated at level 6. Usage::

    python scripts/make_embedded_mnist.py [--data-dir ../shared/data] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikeep import data  # noqa: E402  (the repository root must be importable first)

OUT = ROOT / "spikeep" / "_data" / "mnist_subset.npz"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp, for reproducible archives


def first_per_class(labels: np.ndarray, per_class: int, classes: int = 10) -> np.ndarray:
    """Sorted row indices of the first ``per_class`` examples of every class in ``labels``."""
    chosen = []
    for c in range(classes):
        rows = np.flatnonzero(labels == c)[:per_class]
        if len(rows) < per_class:
            raise SystemExit(f"class {c} has {len(rows)} examples, expected {per_class}")
        chosen.append(rows)
    return np.sort(np.concatenate(chosen))


def subset(folder: Path, prefix: str, per_class: int) -> dict[str, np.ndarray]:
    """Images, labels and source rows of the first ``per_class`` examples of each class."""
    images = data.read_idx(_idx(folder, f"{prefix}-images-idx3-ubyte"))
    labels = data.read_idx(_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    rows = first_per_class(labels, per_class)
    split = "train" if prefix == "train" else "test"
    return {
        f"{split}_images": images[rows],
        f"{split}_labels": labels[rows].astype(np.uint8),
        f"{split}_index": rows.astype(np.uint16),
    }


def _idx(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.is_file() else folder / stem


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deflate-compressed npz of ``arrays`` with fixed timestamps (same input, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=6)
    return buffer.getvalue()


def build(data_dir: str | Path | None = None, train_per_class=1000, test_per_class=200) -> bytes:
    """The npz content, read from the MNIST IDX files that :func:`spikeep.data.find` locates."""
    folder = data.find("mnist", data_dir)
    arrays = {**subset(folder, "train", train_per_class), **subset(folder, "t10k", test_per_class)}
    return npz_bytes(arrays)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files (default: search)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default: {OUT})")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args(argv)
    content = build(args.data_dir, args.train_per_class, args.test_per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(content)
    print(f"wrote {args.out} ({len(content):,} bytes)")


if __name__ == "__main__":
    main()
