"""Image data sets: reading them from disk, turning them into tensors, augmenting them.

Four data sets are known (:data:`DATASETS`):

``mnist``, ``fashion-mnist``
    The four IDX files of each (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed with a
    ``.gz`` suffix), found by :func:`find` in a user folder, ``$SPIKEEP_DATA`` or the project's
    shared data folder. :func:`fetch` downloads them on explicit request only; nothing else here
    touches the network.
``mnist-embedded``
    A class-balanced subset of real MNIST shipped inside the package (``spikeep/_data``): the first
    1,000 training and the first 200 test images of each digit, in file order. Always available.
``cifar10``
    The ``cifar-10-batches-py`` pickles in a user-given folder, read by a restricted unpickler that
    only rebuilds numpy arrays and refuses every other global.

IDX format: two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C
int32, 0x0D float32, 0x0E float64), the number of dimensions ``d``, then ``d`` big-endian uint32
sizes and the data, big-endian, in C order.

Images are kept as uint8 tensors of shape ``(N, C, H, W)`` (``(N, 1, 28, 28)`` for the MNIST
family, ``(N, 3, 32, 32)`` for CIFAR-10) and labels as int64 ``(N,)``; :func:`to_float` maps pixels
to float32 in ``[0, 1]``, optionally standardised per channel, :func:`augment` applies random
crops and horizontal flips and :func:`one_hot` builds targets.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import importlib.resources
import os
import pickle
import struct
import tempfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "Dataset",
    "DATASETS",
    "IDX_FILES",
    "SHA256",
    "MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "STATS",
    "read_idx",
    "find",
    "location",
    "load",
    "fetch",
    "to_float",
    "augment",
    "one_hot",
]


class DataError(ValueError):
    """A data set that is missing, malformed or unsafe to read, or a bad argument about one."""


DATASETS = ("mnist", "fashion-mnist", "mnist-embedded", "cifar10")
SPLITS = ("train", "test")
IDX_DATASETS = ("mnist", "fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# SHA-256 of the *uncompressed* IDX files.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

# Public mirrors of the gzip-compressed IDX files, tried in order by :func:`fetch`.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

# Per-channel pixel statistics on [0, 1] of the training sets.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
STATS = {
    "mnist": (MNIST_MEAN, MNIST_STD),
    "mnist-embedded": (MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
}

CLASSES = 10
_ROOT = Path(__file__).resolve().parents[1]  # the repository root in a source checkout
_EMBEDDED = "mnist_subset.npz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set.

    ``images``: uint8 tensor ``(N, C, H, W)``, pixel values 0..255; ``labels``: int64 tensor
    ``(N,)`` in ``0 .. classes - 1``; ``name`` and ``split`` as given to :func:`load`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    classes: int = CLASSES

    def __len__(self) -> int:
        return len(self.labels)


# -- IDX files ---------------------------------------------------------------------------------

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The (decompressed, if the name ends in ``.gz``) content of ``path``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``) into a native-endian array.

    The shape is the one the header declares, e.g. ``(60000, 28, 28)`` uint8 for MNIST training
    images. Raises :class:`DataError` naming the file when the magic number, the type code or the
    declared sizes do not match the content.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes at least)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}, expected two zero bytes first"
        )
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X}, expected one of {known}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


# -- finding and loading -----------------------------------------------------------------------


def _check_name(name: str, known: Sequence[str]) -> None:
    if name not in known:
        raise DataError(f"unknown data set {name!r}, expected one of {', '.join(known)}")


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem``, whichever exists (the compressed one first)."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _has_idx_files(folder: Path) -> bool:
    return all(_idx_file(folder, stem) is not None for stem in IDX_FILES)


def _given_folder(data_dir: str | Path, name: str) -> Path:
    """``data_dir`` as a folder that exists, or :class:`DataError` naming it."""
    folder = Path(data_dir)
    if not folder.exists():
        raise DataError(f"{name} data folder {folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{name} data folder {folder}: not a folder")
    return folder


def _candidates(name: str, data_dir: str | Path | None) -> list[Path]:
    """The folders :func:`find` searches, in order, without duplicates: ``data_dir`` and
    ``data_dir/name`` alone when a folder is given, else the environment's and the shared ones."""
    if data_dir is not None:
        folder = _given_folder(data_dir, name)
        return [folder, folder / name]
    places: list[Path] = []
    env = os.environ.get("SPIKEEP_DATA") or None
    if env is not None:
        places += [Path(env), Path(env) / name]
    places.append(Path.cwd().parent / "shared" / "data" / name)
    places.append(_ROOT.parent / "shared" / "data" / name)
    unique: list[Path] = []
    for place in places:
        if place not in unique:
            unique.append(place)
    return unique


def find(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding the four IDX files of ``name`` (``"mnist"`` or ``"fashion-mnist"``).

    A given ``data_dir`` is the only place searched (it and ``data_dir/name``): a missing folder,
    a file or a folder without all four files is an error, never a silent fall-back. Without one:
    ``$SPIKEEP_DATA`` and ``$SPIKEEP_DATA/name``; ``../shared/data/name`` from the current
    directory; the same from the repository root. Raises :class:`DataError` listing every place
    searched when none has them.
    """
    _check_name(name, IDX_DATASETS)
    places = _candidates(name, data_dir)
    for place in places:
        if _has_idx_files(place):
            return place
    searched = "; ".join(str(p) for p in places)
    raise DataError(
        f"no {name} IDX files ({', '.join(IDX_FILES)}, each optionally .gz) in any of: {searched}"
    )


def location(name: str, data_dir: str | Path | None = None) -> str:
    """Where :func:`load` reads data set ``name`` from (a folder, or the package's subset)."""
    _check_name(name, DATASETS)
    if name == "mnist-embedded":
        return f"{_embedded_path()} (the MNIST subset shipped in the package)"
    if name == "cifar10":
        return str(_cifar_folder("train", data_dir).resolve())
    return str(find(name, data_dir).resolve())


def _load_idx(name: str, split: str, data_dir: str | Path | None) -> Dataset:
    folder = find(name, data_dir)
    prefix = _SPLIT_PREFIX[split]
    images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path}: {images.dtype} images of shape {images.shape}, "
            "expected uint8 of shape (N, 28, 28)"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: labels of shape {labels.shape}, expected ({len(images)},) "
            f"to match {images_path.name}"
        )
    return _dataset(images[:, None], labels, name, split, str(labels_path))


def _dataset(images: np.ndarray, labels: np.ndarray, name: str, split: str, source: str):
    if len(images) == 0:
        raise DataError(f"{source}: holds no {split} images, expected at least one")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
        raise DataError(
            f"{source}: labels range over {labels.min()}..{labels.max()}, expected 0..{CLASSES - 1}"
        )
    return Dataset(torch.from_numpy(images), torch.from_numpy(labels), name, split, CLASSES)


def _embedded_path():
    return importlib.resources.files(__package__) / "_data" / _EMBEDDED


def _load_embedded(split: str) -> Dataset:
    resource = _embedded_path()
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise DataError(f"{path}: the embedded MNIST subset is missing from the installation")
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    return _dataset(images[:, None], labels, "mnist-embedded", split, str(resource))


def load(name: str, split: str, data_dir: str | Path | None = None) -> Dataset:
    """One split (``"train"`` or ``"test"``) of data set ``name`` (see :data:`DATASETS`).

    ``mnist`` and ``fashion-mnist`` are located by :func:`find` (in ``data_dir`` alone when
    given); ``mnist-embedded`` is read from the package (a given ``data_dir`` must still be a
    folder); ``cifar10`` needs ``data_dir``: the ``cifar-10-batches-py`` folder or its parent.
    """
    _check_name(name, DATASETS)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}, expected one of {', '.join(SPLITS)}")
    if data_dir is not None:  # a folder given for nothing is still checked: never ignored
        _given_folder(data_dir, name)
    if name == "mnist-embedded":
        return _load_embedded(split)
    if name == "cifar10":
        return _load_cifar10(split, data_dir)
    return _load_idx(name, split, data_dir)


# -- CIFAR-10 ----------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What ``_codecs.encode`` does in the pickles Python 3 writes for ``bytes`` at protocol 2,
    restricted to the latin-1 encoding those pickles use."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}, expected latin1")
    return codecs.encode(text, "latin1")


def _array_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled uint8 array may name, under both numpy module layouts."""
    reconstruct = np.zeros(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers and nothing else."""

    _allowed = _array_globals()

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refused to unpickle global {module}.{name}; "
                "a CIFAR-10 batch may only hold numpy arrays, lists, numbers and strings"
            ) from None


def _unpickle(path: Path) -> object:
    try:
        with path.open("rb") as f:
            return _ArrayUnpickler(f, str(path)).load()
    except DataError:
        raise
    except Exception as err:  # a malformed pickle raises many types
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err})"
        ) from None


def _entry(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: no {key!r} entry, expected keys b'data' and b'labels'")


def _is_cifar_data(data) -> bool:
    """A uint8 array of shape ``(n, 3 * 32 * 32)``, as in the CIFAR-10 batches."""
    return isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, 3, 32, 32) uint8, labels (n,) int64)`` from one batch file."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}, expected a dict")
    data, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    if not _is_cifar_data(data):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data is {got}, expected a uint8 array of shape (n, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: labels are not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.shape} labels, expected ({len(data)},) like the data")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_folder(split: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DataError(
            f"cifar10 needs data_dir: a folder holding {_CIFAR_FOLDER} (or that folder itself)"
        )
    folder = _given_folder(data_dir, "cifar10")
    places = [folder, folder / _CIFAR_FOLDER]
    for place in places:
        if all((place / f).is_file() for f in _CIFAR_FILES[split]):
            return place
    raise DataError(
        f"no CIFAR-10 {split} batches ({', '.join(_CIFAR_FILES[split])}) in any of: "
        + "; ".join(str(p) for p in places)
    )


def _load_cifar10(split: str, data_dir: str | Path | None) -> Dataset:
    folder = _cifar_folder(split, data_dir)
    parts = [_read_cifar_batch(folder / f) for f in _CIFAR_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _dataset(images, labels, "cifar10", split, str(folder))


# -- tensors -----------------------------------------------------------------------------------


def _channel_stats(normalize, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(normalize, str):
        if normalize not in STATS:
            raise DataError(f"no statistics for {normalize!r}, expected one of {', '.join(STATS)}")
        normalize = STATS[normalize]
    try:
        mean, std = (torch.atleast_1d(torch.as_tensor(v, dtype=torch.float32)) for v in normalize)
    except (TypeError, ValueError):
        raise DataError(
            f"normalize={normalize!r}, expected a (mean, std) pair of per-channel tuples"
        ) from None
    for label, v in (("mean", mean), ("std", std)):
        if v.dim() != 1 or len(v) not in (1, channels):
            raise DataError(
                f"normalize {label} {tuple(v.tolist())} has {v.numel()} values, "
                f"expected 1 or {channels} (one per channel)"
            )
    if (std <= 0).any():
        raise DataError(f"normalize std {tuple(std.tolist())}, expected positive values")
    return mean, std


def to_float(images: torch.Tensor, normalize=None) -> torch.Tensor:
    """uint8 images ``(..., C, H, W)`` -> float32 pixels in ``[0, 1]`` (``x / 255``), same shape.

    ``normalize``: ``None``; a ``(mean, std)`` pair of per-channel tuples (in ``[0, 1]`` units),
    giving ``(x / 255 - mean_c) / std_c``; or a data set name, to use its :data:`STATS`.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"to_float got {got} images, expected a uint8 tensor")
    x = images.to(torch.float32).div_(255.0)
    if normalize is None:
        return x
    if x.dim() < 3:
        raise DataError(
            f"cannot normalise images of shape {tuple(x.shape)}, expected (..., C, H, W)"
        )
    mean, std = _channel_stats(normalize, x.shape[-3])
    mean, std = mean.to(x.device).view(-1, 1, 1), std.to(x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def augment(
    x: torch.Tensor, generator: torch.Generator, crop_padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crops and horizontal flips of a batch ``(N, C, H, W)``; same shape and dtype.

    Each image is zero-padded by ``crop_padding`` pixels on every side, cropped back to ``H x W``
    at an offset drawn uniformly from ``0 .. 2 * crop_padding`` in each direction, then mirrored
    left-right with probability 1/2 when ``flip``. All draws come from ``generator`` (offsets first,
    then flips), so a seeded generator gives the same result on every run.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"augment got images {got}, expected a tensor of shape (N, C, H, W)")
    if not isinstance(generator, torch.Generator):
        raise DataError(f"augment got generator {generator!r}, expected a torch.Generator")
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise DataError(f"crop_padding={crop_padding!r}, expected a non-negative integer")
    n, c, h, w = x.shape
    if crop_padding >= min(h, w):
        raise DataError(
            f"crop_padding={crop_padding} would shift whole {h}x{w} images out of the frame, "
            f"expected less than {min(h, w)}"
        )
    p = crop_padding

    def draw_offsets() -> torch.Tensor:
        drawn = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=generator.device)
        return drawn.to(x.device)

    dy, dx = (draw_offsets(), draw_offsets()) if p else (x.new_zeros(n, dtype=torch.long),) * 2
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W) columns
    if flip:
        mirrored = torch.rand(n, generator=generator, device=generator.device) < 0.5
        cols = torch.where(mirrored.to(x.device)[:, None], cols.flip(1), cols)
    padded = F.pad(x, (p, p, p, p)) if p else x
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def one_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer labels ``(N,)`` in ``0 .. classes - 1`` -> one-hot targets ``(N, classes)``."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"one_hot got {labels.dtype} labels, expected an integer tensor")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"labels range over {int(labels.min())}..{int(labels.max())}, "
            f"expected 0..{classes - 1} for {classes} classes"
        )
    return F.one_hot(labels.long(), classes).to(dtype)


# -- downloading -------------------------------------------------------------------------------

Progress = Callable[[str, int, int | None], None]
_CHUNK = 1 << 16


def _sha256_gunzipped(path: Path) -> str:
    """SHA-256 of the decompressed content of the gzip file ``path``, whatever its name."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mirrors(name: str, mirrors: Sequence[str] | None) -> list[str]:
    """The URL prefixes to try: ``mirrors``, else ``$SPIKEEP_MIRROR_<NAME>``, else the defaults."""
    if mirrors is None:
        env = os.environ.get("SPIKEEP_MIRROR_" + name.upper().replace("-", "_"), "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or MIRRORS[name]
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    prefixes = []
    for m in mirrors:
        if urllib.parse.urlsplit(m).scheme not in ("http", "https", "file"):
            raise DataError(f"mirror {m!r} is not a URL, expected an http, https or file prefix")
        prefixes.append(m if m.endswith("/") else m + "/")
    if not prefixes:
        raise DataError(f"no mirrors to fetch {name} from, expected at least one URL prefix")
    return prefixes


def _download(url: str, target: Path, timeout: float, progress: Progress | None) -> Path:
    """Stream ``url`` to a temporary file beside ``target``; return the temporary path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(target.name, done, total)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _verify(tmp: Path, target: Path, expected: str) -> None:
    """Check the uncompressed SHA-256 of a download; delete it and raise on a mismatch."""
    try:
        actual = _sha256_gunzipped(tmp)
    except (OSError, EOFError, zlib.error) as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{target.name}: the download is not a valid gzip file ({err})") from None
    if actual != expected:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{target.name}: SHA-256 of the uncompressed download is {actual}, expected {expected}"
        )


def _already_fetched(target: Path, expected: str) -> bool:
    try:
        return target.is_file() and _sha256_gunzipped(target) == expected
    except (OSError, EOFError, zlib.error):  # a damaged earlier copy: fetch it again
        return False


def _fetch_file(stem: str, folder: Path, prefixes, expected, timeout, progress) -> None:
    target = folder / f"{stem}.gz"
    if _already_fetched(target, expected):
        return
    failures = []
    for prefix in prefixes:
        url = prefix + target.name
        try:
            tmp = _download(url, target, timeout, progress)
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            failures.append(f"{url} ({err})")
            continue
        _verify(tmp, target, expected)
        os.replace(tmp, target)
        return
    raise DataError(f"could not download {target.name} from any mirror: {'; '.join(failures)}")


def fetch(
    name: str,
    to: str | Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30,
    progress: Progress | None = None,
) -> Path:
    """Download the four gzip IDX files of ``name`` into ``to/name/``; return that folder.

    Each file is tried at every mirror prefix in turn (``mirrors``, else the comma-separated
    ``$SPIKEEP_MIRROR_<NAME>``, e.g. ``SPIKEEP_MIRROR_FASHION_MNIST``, else :data:`MIRRORS`),
    written under a temporary name and renamed into place only once the SHA-256 of its
    uncompressed content matches :data:`SHA256`; a mismatch deletes it and raises
    :class:`DataError`. Files already present with the right hash are kept. ``timeout`` is in
    seconds per request; ``progress(file_name, bytes_done, bytes_total_or_None)`` is called as
    data arrives. Prints nothing.
    """
    _check_name(name, IDX_DATASETS)
    prefixes = _mirrors(name, mirrors)
    if Path(to).exists() and not Path(to).is_dir():
        raise DataError(f"{to}: not a folder, expected the folder to write {name}/ into")
    folder = Path(to) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{folder}: cannot create the folder ({err.strerror or err})") from None
    for stem in IDX_FILES:
        _fetch_file(stem, folder, prefixes, SHA256[name][stem], timeout, progress)
    return folder
