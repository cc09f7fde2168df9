"""``spikeep.data``: IDX reading on the real files and on corrupt ones, the search order of
``find``, the embedded MNIST subset against its source, pixel scaling, augmentation, the restricted
CIFAR-10 unpickler, and ``fetch`` against a local HTTP server.

Tests that need the real MNIST / Fashion-MNIST files skip when ``find`` cannot locate them; the
embedded subset is always there."""

from __future__ import annotations

import builtins
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, script

from spikeep import data
from spikeep.data import DataError

# -- helpers -----------------------------------------------------------------------------------


@functools.cache
def _folder(name: str) -> Path | None:
    try:
        return data.find(name)
    except DataError:
        return None


def real_folder(name: str) -> Path:
    """The folder of the real IDX files of ``name``, or skip the test."""
    folder = _folder(name)
    if folder is None:
        pytest.skip(
            f"real {name} IDX files not found (optional; see data.find for where to put them)"
        )
    return folder


@functools.cache
def _read(name: str, stem: str) -> np.ndarray:
    folder = real_folder(name)
    return data.read_idx(
        folder / f"{stem}.gz" if (folder / f"{stem}.gz").is_file() else folder / stem
    )


def real(name: str, stem: str) -> np.ndarray:
    """A real IDX file as an array (read once per session), or skip the test."""
    real_folder(name)
    return _read(name, stem)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def write_idx(path: Path, array: np.ndarray, code: int) -> Path:
    """Write ``array`` as an IDX file (big-endian) with type ``code``."""
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    content = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def fake_dataset(folder: Path, plain: tuple[str, ...] = ()) -> Path:
    """A folder with the four IDX file names (empty files; ``find`` only looks at names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in data.IDX_FILES:
        (folder / (stem if stem in plain else f"{stem}.gz")).touch()
    return folder


# -- read_idx on the real files ----------------------------------------------------------------


def test_mnist_train_labels():
    labels = real("mnist", "train-labels-idx1-ubyte")
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == set(range(10))


def test_fashion_mnist_is_balanced():
    train = real("fashion-mnist", "train-labels-idx1-ubyte")
    test = real("fashion-mnist", "t10k-labels-idx1-ubyte")
    assert np.bincount(train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test, minlength=10).tolist() == [1000] * 10


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_pixel_statistics_match_the_constants(name):
    images = real(name, "train-images-idx3-ubyte")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    # Exact float64 moments of x = u / 255 from the histogram of the uint8 values u.
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    (want_mean,), (want_std,) = data.STATS[name]
    assert abs(mean - want_mean) < 1e-3
    assert abs(std - want_std) < 1e-3


def test_plain_and_gzip_give_the_same_array(tmp_path):
    gz = real_folder("mnist") / "t10k-labels-idx1-ubyte.gz"
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    a, b = data.read_idx(gz), data.read_idx(plain)
    assert a.shape == b.shape == (10000,)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("dtype", "code"), [(np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)]
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_other_types(tmp_path, dtype, code, suffix):
    array = (np.arange(24).reshape(2, 3, 4) * 1000 - 7000).astype(dtype)
    out = data.read_idx(write_idx(tmp_path / f"x.idx{suffix}", array, code))
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_load_mnist_shapes():
    real_folder("mnist")
    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert (train.name, train.split, train.classes, len(test)) == ("mnist", "train", 10, 10000)


# -- read_idx on corrupt files -----------------------------------------------------------------

_GOOD = bytes([0, 0, 0x08, 2]) + np.array([2, 3], ">u4").tobytes() + bytes(range(6))
_CORRUPT = {
    "bad magic": (b"\x01\x00" + _GOOD[2:], "magic"),
    "unknown type": (_GOOD[:2] + b"\x07" + _GOOD[3:], "type code 0x07"),
    "zero dimensions": (bytes([0, 0, 8, 0]), "0 dimensions"),
    "truncated header": (_GOOD[:6], "truncated IDX header"),
    "truncated data": (_GOOD[:-1], "5 data bytes"),
    "extra data": (_GOOD + b"\x00", "7 data bytes"),
    "empty": (b"", "too short"),
}


@pytest.mark.parametrize("case", sorted(_CORRUPT))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_corrupt_idx_is_refused(tmp_path, case, suffix):
    content, words = _CORRUPT[case]
    path = tmp_path / f"bad-idx1-ubyte{suffix}"
    path.write_bytes(gzip.compress(content) if suffix else content)
    with pytest.raises(DataError) as err:
        data.read_idx(path)
    message = one_line(err)
    assert str(path) in message and words in message


def test_good_idx_reference_reads(tmp_path):  # the base of the corrupt cases is itself valid
    path = tmp_path / "good"
    path.write_bytes(_GOOD)
    np.testing.assert_array_equal(data.read_idx(path), np.arange(6).reshape(2, 3))


def test_truncated_gzip_is_refused(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(_GOOD)[:-12])
    with pytest.raises(DataError, match="cannot read") as err:
        data.read_idx(path)
    assert str(path) in one_line(err)


def test_missing_idx_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "nothing.gz")


# -- find --------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No $SPIKEEP_DATA, a working directory without ../shared, and a repository root without
    ../shared: only what a test sets up is found."""
    monkeypatch.delenv("SPIKEEP_DATA", raising=False)
    (tmp_path / "cwd" / "here").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd" / "here")
    monkeypatch.setattr(data, "_ROOT", tmp_path / "root" / "repo")
    return monkeypatch


@pytest.mark.parametrize("nested", [False, True])
def test_find_in_data_dir(tmp_path, clean_env, nested):
    target = fake_dataset(tmp_path / "d" / "mnist" if nested else tmp_path / "d")
    assert data.find("mnist", tmp_path / "d") == target
    assert data.find("mnist", str(tmp_path / "d")) == target


def test_data_dir_comes_before_the_environment(tmp_path, clean_env):
    fake_dataset(tmp_path / "env" / "mnist")
    clean_env.setenv("SPIKEEP_DATA", str(tmp_path / "env"))
    assert data.find("mnist") == tmp_path / "env" / "mnist"
    mine = fake_dataset(tmp_path / "mine")
    assert data.find("mnist", mine) == mine


def test_environment_comes_before_the_shared_folders(tmp_path, clean_env):
    fake_dataset(tmp_path / "cwd" / "shared" / "data" / "fashion-mnist")
    assert data.find("fashion-mnist") == Path.cwd().parent / "shared" / "data" / "fashion-mnist"
    env = fake_dataset(tmp_path / "env")
    clean_env.setenv("SPIKEEP_DATA", str(env))
    assert data.find("fashion-mnist") == env


def test_cwd_comes_before_the_repository_root(tmp_path, clean_env):
    root_copy = fake_dataset(tmp_path / "root" / "shared" / "data" / "mnist")
    assert data.find("mnist") == root_copy
    cwd_copy = fake_dataset(tmp_path / "cwd" / "shared" / "data" / "mnist")
    assert data.find("mnist") == cwd_copy


def test_find_accepts_plain_files_and_skips_incomplete_folders(tmp_path, clean_env):
    incomplete = fake_dataset(tmp_path / "a")
    (incomplete / "t10k-labels-idx1-ubyte.gz").unlink()
    clean_env.setenv("SPIKEEP_DATA", str(tmp_path / "a"))
    fake_dataset(tmp_path / "a" / "mnist", plain=("train-images-idx3-ubyte",))
    assert data.find("mnist") == tmp_path / "a" / "mnist"


def test_find_error_lists_every_place(tmp_path, clean_env):
    clean_env.setenv("SPIKEEP_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        data.find("mnist")
    message = one_line(err)
    places = [
        tmp_path / "env",
        tmp_path / "env" / "mnist",
        tmp_path / "cwd" / "shared" / "data" / "mnist",
        tmp_path / "root" / "shared" / "data" / "mnist",
    ]
    assert message.split("in any of: ")[1].split("; ") == [str(p) for p in places]


def test_a_given_data_folder_is_the_only_place_searched(tmp_path, clean_env):
    """A missing, partial or non-folder data_dir is an error, never a fall-back to the shared
    folders (which hold the data here)."""
    fake_dataset(tmp_path / "env" / "mnist")
    clean_env.setenv("SPIKEEP_DATA", str(tmp_path / "env"))
    (tmp_path / "file").write_text("x")
    partial = fake_dataset(tmp_path / "partial")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    for given, words in [
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "file", "not a folder"),
        (partial, "in any of: "),
    ]:
        with pytest.raises(DataError) as err:
            data.find("mnist", given)
        message = one_line(err)
        assert str(given) in message and words in message and "env" not in message
    assert "partial/mnist" in message.split("in any of: ")[1]
    with pytest.raises(DataError, match="no such folder"):
        data.load("cifar10", "test", tmp_path / "missing")
    assert data.location("mnist") == str((tmp_path / "env" / "mnist").resolve())
    assert "shipped in the package" in data.location("mnist-embedded", tmp_path / "missing")


def test_a_data_file_with_no_images_is_refused(tmp_path, clean_env):
    folder = fake_dataset(tmp_path / "d")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8), 0x08)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros((0,), np.uint8), 0x08)
    with pytest.raises(DataError, match="holds no test images"):
        data.load("mnist", "test", folder)


def test_crop_padding_must_leave_the_image_in_the_frame():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert data.augment(x, g, 27).shape == x.shape
    with pytest.raises(DataError, match="expected less than 28"):
        data.augment(x, g, 28)


def test_fetch_to_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(DataError, match="not a folder"):
        data.fetch("mnist", target, mirrors=["file:///nowhere/"])
    assert target.read_text() == "keep"


def test_unknown_names_and_splits():
    with pytest.raises(DataError) as err:
        data.find("emnist")
    assert "'emnist'" in one_line(err) and "mnist, fashion-mnist" in str(err.value)
    with pytest.raises(DataError) as err:
        data.load("svhn", "train")
    assert all(name in one_line(err) for name in data.DATASETS)
    with pytest.raises(DataError, match="split 'val'.*train, test"):
        data.load("mnist-embedded", "val")


# -- the embedded subset -----------------------------------------------------------------------


@pytest.mark.parametrize(("split", "per_class"), [("train", 1000), ("test", 200)])
def test_embedded_subset(split, per_class):
    ds = data.load("mnist-embedded", split)
    assert ds.images.shape == (10 * per_class, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
    assert (ds.name, ds.split, ds.classes) == ("mnist-embedded", split, 10)
    assert ds.images.float().mean() > 10  # real digits, not blank images


@pytest.mark.parametrize(
    ("split", "prefix", "per_class"), [("train", "train", 1000), ("test", "t10k", 200)]
)
def test_embedded_subset_is_the_first_of_each_class(split, prefix, per_class):
    images = real("mnist", f"{prefix}-images-idx3-ubyte")
    labels = real("mnist", f"{prefix}-labels-idx1-ubyte")
    with np.load(ROOT / "spikeep" / "_data" / "mnist_subset.npz") as npz:
        index = npz[f"{split}_index"].astype(np.int64)
    want = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    np.testing.assert_array_equal(index, want)
    ds = data.load("mnist-embedded", split)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images[index])
    np.testing.assert_array_equal(ds.labels.numpy(), labels[index])


def test_embedded_generator_is_deterministic():
    folder = real_folder("mnist")
    make_embedded = script("make_embedded_mnist")
    first, second = make_embedded.build(folder), make_embedded.build(folder)
    assert first == second
    shipped = np.load(ROOT / "spikeep" / "_data" / "mnist_subset.npz")
    with np.load(io.BytesIO(first)) as built, shipped:
        assert sorted(built.files) == sorted(shipped.files)
        for key in built.files:
            np.testing.assert_array_equal(built[key], shipped[key])


# -- tensors -----------------------------------------------------------------------------------


def test_to_float_scales_to_unit_interval():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    x = data.to_float(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert x[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_to_float_normalises_per_channel():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    x = data.to_float(images, normalize=(data.CIFAR10_MEAN, data.CIFAR10_STD))
    for c in range(3):
        want = (images[:, c].double() / 255 - data.CIFAR10_MEAN[c]) / data.CIFAR10_STD[c]
        torch.testing.assert_close(x[:, c].double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(data.to_float(images, "cifar10"), x)
    mnist = data.to_float(images[:, :1], data.STATS["mnist"])
    torch.testing.assert_close(mnist.mean() * 0.3081 + 0.1307, images[:, :1].float().mean() / 255)


def test_to_float_bad_input():
    with pytest.raises(DataError, match="torch.float32 images, expected a uint8"):
        data.to_float(torch.zeros(1, 1, 2, 2))
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match=r"mean \(0.1307.*2 values, expected 1 or 3"):
        data.to_float(images, ((0.1307, 0.1), (0.3, 0.3, 0.3)))
    with pytest.raises(DataError, match="expected positive"):
        data.to_float(images, ((0.5,), (0.0,)))
    with pytest.raises(DataError, match="no statistics for 'imagenet'"):
        data.to_float(images, "imagenet")


def _reference_augment(x, seed, p, flip):
    """Per-sample crop and flip with the same draws as ``data.augment``, written as a loop."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g) if p else torch.zeros(n, dtype=torch.long)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g) if p else torch.zeros(n, dtype=torch.long)
    mirrored = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    padded = torch.zeros(n, x.shape[1], h + 2 * p, w + 2 * p, dtype=x.dtype)
    padded[:, :, p : p + h, p : p + w] = x
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if mirrored[i] else crop
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize(("p", "flip"), [(4, True), (2, False), (0, True)])
def test_augment_matches_a_per_sample_loop(dtype, p, flip):
    x = torch.randint(1, 256, (64, 3, 8, 10), generator=torch.Generator().manual_seed(1))
    x = x.to(dtype)
    out = data.augment(x, torch.Generator().manual_seed(7), p, flip)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, _reference_augment(x, 7, p, flip), rtol=0, atol=0)


def test_augment_is_deterministic_for_a_seed():
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    a = data.augment(x, torch.Generator().manual_seed(3))
    b = data.augment(x, torch.Generator().manual_seed(3))
    c = data.augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_flip_only_mirrors_about_half():
    x = torch.arange(200 * 2 * 3 * 5, dtype=torch.float32).view(200, 2, 3, 5)  # no symmetric image
    out = data.augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=True)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())
    assert 60 < int(mirrored.sum()) < 140
    assert torch.equal(data.augment(x, torch.Generator(), crop_padding=0, flip=False), x)


def test_augment_crop_moves_content_and_pads_with_zeros():
    x = torch.ones(100, 1, 6, 6)
    out = data.augment(x, torch.Generator().manual_seed(0), crop_padding=2, flip=False)
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.min() == 0 and zeros.max() > 0  # some crops are centred, some shifted
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_augment_bad_input():
    g = torch.Generator()
    with pytest.raises(DataError, match=r"images \(4, 784\), expected a tensor of shape"):
        data.augment(torch.zeros(4, 784), g)
    with pytest.raises(DataError, match="crop_padding=-1, expected a non-negative integer"):
        data.augment(torch.zeros(1, 1, 4, 4), g, crop_padding=-1)
    with pytest.raises(DataError, match="expected a torch.Generator"):
        data.augment(torch.zeros(1, 1, 4, 4), 0)


def test_one_hot():
    y = data.one_hot(torch.tensor([2, 0, 1]), 3)
    assert y.dtype == torch.float32
    assert y.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    with pytest.raises(DataError, match=r"range over 0\.\.3, expected 0\.\.2 for 3 classes"):
        data.one_hot(torch.tensor([0, 3]), 3)
    with pytest.raises(DataError, match="torch.float32 labels"):
        data.one_hot(torch.tensor([0.0]), 3)


# -- CIFAR-10 ----------------------------------------------------------------------------------


def write_cifar(folder: Path, protocol: int, per_batch: int = 3) -> dict[str, np.ndarray]:
    """Small batches in the ``cifar-10-batches-py`` layout; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, stem in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        pixels = rng.integers(0, 256, (per_batch + i % 2, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, len(pixels))]
        batch = {
            b"batch_label": stem.encode(),
            b"labels": labels,
            b"data": pixels,
            b"filenames": [b"img.png"] * len(pixels),
        }
        with (folder / stem).open("wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[stem] = (pixels, np.array(labels))
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_round_trip(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    train = data.load("cifar10", "train", tmp_path)
    test = data.load("cifar10", "test", tmp_path / "cifar-10-batches-py")
    pixels = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = np.concatenate([written[f"data_batch_{k}"][1] for k in range(1, 6)])
    assert train.images.shape == (len(pixels), 3, 32, 32) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images.numpy(), pixels.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(train.labels.numpy(), labels)
    # Channel-major rows: the first 1024 values are the red plane, row by row.
    assert train.images[0, 0, 1, 0] == pixels[0, 32] and train.images[0, 2, 0, 0] == pixels[0, 2048]
    np.testing.assert_array_equal(test.labels.numpy(), written["test_batch"][1])
    assert (test.name, test.split, test.classes) == ("cifar10", "test", 10)


class _Evil:
    """Unpickles into a call of ``self.call(*self.args)``."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_cifar10_refuses_foreign_globals(tmp_path, kind):
    marker = tmp_path / "ran"
    if kind == "os.system":
        evil, refused = _Evil(os.system, f"touch {marker}"), f"{os.system.__module__}.system"
    else:
        evil, refused = _Evil(builtins.eval, f"open({str(marker)!r}, 'w')"), "__builtin__.eval"
    batch = {b"data": evil, b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test", tmp_path)
    message = one_line(err)
    assert f"refused to unpickle global {refused}" in message and "test_batch" in message
    assert not marker.exists()


def test_cifar10_bad_batches(tmp_path):
    with pytest.raises(DataError, match="cifar10 needs data_dir"):
        data.load("cifar10", "train")
    with pytest.raises(DataError, match="no CIFAR-10 test batches") as err:
        data.load("cifar10", "test", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in one_line(err)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"uint8 \(2, 100\), expected a uint8 array of shape"):
        data.load("cifar10", "test", tmp_path)
    short = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(short, protocol=2))
    with pytest.raises(DataError, match=r"\(1,\) labels, expected \(2,\)"):
        data.load("cifar10", "test", tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch"):
        data.load("cifar10", "test", tmp_path)


# -- fetch -------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server over a folder with ``mnist/`` (the real files), ``bad/`` (the real
    files but a corrupted train-labels) and ``missing/`` (nothing); yields its base URL."""
    mnist = real_folder("mnist")
    if not all((mnist / f"{stem}.gz").is_file() for stem in data.IDX_FILES):
        pytest.skip(f"{mnist} has plain IDX files; serving needs the .gz ones")
    root = tmp_path_factory.mktemp("served")
    (root / "mnist").symlink_to(mnist, target_is_directory=True)
    (root / "missing").mkdir()
    (root / "bad").mkdir()
    bad = "train-labels-idx1-ubyte.gz"
    for stem in data.IDX_FILES:
        if f"{stem}.gz" != bad:
            (root / "bad" / f"{stem}.gz").symlink_to(mnist / f"{stem}.gz")
    labels = bytearray(gzip.decompress((mnist / bad).read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # one label changed, past the 8-byte header
    (root / "bad" / bad).write_bytes(gzip.compress(bytes(labels)))
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {
        "url": f"http://127.0.0.1:{httpd.server_address[1]}/",
        "bad_sha": hashlib.sha256(bytes(labels)).hexdigest(),
    }
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _check_fetched(folder: Path, name: str = "mnist"):
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in data.IDX_FILES)
    for stem in data.IDX_FILES:
        content = gzip.decompress((folder / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == data.SHA256[name][stem]


def test_fetch_from_a_local_mirror(tmp_path, server, no_proxy):
    seen = {}

    def progress(file_name, done, total):
        seen[file_name] = (done, total)

    folder = data.fetch("mnist", tmp_path, mirrors=[server["url"] + "mnist/"], progress=progress)
    assert folder == tmp_path / "mnist"
    _check_fetched(folder)
    assert data.find("mnist", tmp_path) == folder
    assert sorted(seen) == sorted(f"{s}.gz" for s in data.IDX_FILES)
    for file_name, (done, total) in seen.items():
        assert done == total == (folder / file_name).stat().st_size
    # Files already there with the right hash are kept: a dead mirror is never asked.
    assert data.fetch("mnist", tmp_path, mirrors=[server["url"] + "missing/"]) == folder


def test_fetch_falls_through_a_404_mirror(tmp_path, server, no_proxy, monkeypatch):
    prefixes = f"{server['url']}missing/, {server['url']}mnist"  # no trailing slash: added
    monkeypatch.setenv("SPIKEEP_MIRROR_MNIST", prefixes)
    _check_fetched(data.fetch("mnist", tmp_path))


def test_fetch_hash_mismatch_leaves_nothing(tmp_path, server, no_proxy):
    with pytest.raises(DataError) as err:
        data.fetch("mnist", tmp_path, mirrors=[server["url"] + "bad/"])
    message = one_line(err)
    assert "train-labels-idx1-ubyte.gz" in message
    assert server["bad_sha"] in message
    assert data.SHA256["mnist"]["train-labels-idx1-ubyte"] in message
    left = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert left == ["train-images-idx3-ubyte.gz"]  # fetched before, verified; no partial file


def test_fetch_when_every_mirror_fails(tmp_path, server, no_proxy):
    missing = server["url"] + "missing/"
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz") as err:
        data.fetch("mnist", tmp_path, mirrors=[missing, missing + "again/"])
    assert "404" in one_line(err) and missing + "again/" in str(err.value)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_fetch_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="mirror 'mirror.example/mnist' is not a URL"):
        data.fetch("mnist", tmp_path, mirrors=["mirror.example/mnist"])
    with pytest.raises(DataError, match="unknown data set 'cifar10'"):
        data.fetch("cifar10", tmp_path)
    monkeypatch.setenv("SPIKEEP_MIRROR_FASHION_MNIST", "file:///a, file:///b/")
    assert data._mirrors("fashion-mnist", None) == ["file:///a/", "file:///b/"]
    monkeypatch.delenv("SPIKEEP_MIRROR_FASHION_MNIST")
    assert data._mirrors("fashion-mnist", None) == list(data.MIRRORS["fashion-mnist"])


def test_shipped_subset_is_small():
    size = (ROOT / "spikeep" / "_data" / "mnist_subset.npz").stat().st_size
    assert 1_000_000 < size < 3_000_000
