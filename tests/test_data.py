"""bench.data: tiny files in the real on-disk formats, written to tmp_path, read back exactly.

No test touches the network: every load passes ``download=False`` or a monkeypatched download.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
import subprocess
from pathlib import Path
from typing import Callable
from urllib.error import URLError

import numpy as np
import pytest
import scipy.io
import torch

import bench.data as data
from bench.data import DATASETS, DatasetInfo, ImageSet, dataset_info, load_dataset
from bench.errors import UnknownNameError, UsageError

SIZES = {"train": 7, "test": 5}  # points per split in the fake files
Expected = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 NCHW, int64 labels)


@pytest.fixture(autouse=True)
def _no_system_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide Debian's Fashion-MNIST so the fake files are what gets read."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------- writers


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """An IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian uint32 dims, data."""
    payload = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_mnist_like(folder: Path, gz: bool = True, seed: int = 0) -> Expected:
    rng = _rng(seed)
    out: Expected = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        n = SIZES[split]
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255  # the extremes must survive
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[split] = (x[:, None], y.astype(np.int64))
    return out


def _cifar_split(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, list[int]]:
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return x, [int(v) for v in rng.integers(0, classes, size=n)]


def write_cifar10(root: Path, protocol: int = 2) -> Expected:
    """data_batch_1..5 and test_batch, pickled dicts as in cifar-10-python.tar.gz."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = _rng(1)
    xs, ys = [], []
    for i, n in enumerate((2, 1, 2, 1, 1), start=1):  # 7 train points over five batches
        x, y = _cifar_split(rng, n, 10)
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": y,
            b"data": x,
            b"filenames": [f"img{i}_{j}.png".encode() for j in range(n)],
        }
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        xs.append(x)
        ys += y
    xt, yt = _cifar_split(rng, SIZES["test"], 10)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": yt,
                b"data": xt,
                b"filenames": [b"t.png"] * len(yt),
            },
            fh,
            protocol=protocol,
        )
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}))
    return {
        "train": (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys, dtype=np.int64)),
        "test": (xt.reshape(-1, 3, 32, 32), np.array(yt, dtype=np.int64)),
    }


def write_cifar100(root: Path, protocol: int = 2) -> Expected:
    """train and test, pickled dicts with fine_labels and coarse_labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = _rng(2)
    out: Expected = {}
    for split in ("train", "test"):
        x, fine = _cifar_split(rng, SIZES[split], 100)
        fine[0] = 99  # the top class must be accepted
        coarse = [v // 5 for v in fine]
        with open(folder / split, "wb") as fh:
            pickle.dump(
                {
                    b"filenames": [b"f.png"] * len(fine),
                    b"batch_label": split.encode(),
                    b"fine_labels": fine,
                    b"coarse_labels": coarse,
                    b"data": x,
                },
                fh,
                protocol=protocol,
            )
        out[split] = (x.reshape(-1, 3, 32, 32), np.array(fine, dtype=np.int64))
    return out


def write_svhn(root: Path) -> Expected:
    """train_32x32.mat and test_32x32.mat: X [32, 32, 3, N] uint8, y [N, 1] with 10 for digit 0."""
    folder = root / "svhn"
    folder.mkdir(parents=True)
    rng = _rng(3)
    out: Expected = {}
    for split in ("train", "test"):
        n = SIZES[split]
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # SVHN labels are 1..10
        y[0, 0], y[1, 0] = 10, 1
        scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
        labels = y[:, 0].astype(np.int64)
        labels[labels == 10] = 0
        out[split] = (x.transpose(3, 2, 0, 1), labels)
    return out


WRITERS: dict[str, Callable[[Path], Expected]] = {
    "fashion-mnist": lambda root: write_mnist_like(root / "fashion-mnist"),
    "mnist": lambda root: write_mnist_like(root / "mnist", seed=5),
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
}


# ----------------------------------------------------------------------------- registry and info


def test_registry_order_and_writers_cover_it() -> None:
    assert DATASETS.names() == ["fashion-mnist", "mnist", "cifar10", "cifar100", "svhn"]
    assert set(WRITERS) == set(DATASETS.names())


@pytest.mark.parametrize("name", DATASETS.names())
def test_info_is_consistent(name: str) -> None:
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo)
    assert info is DATASETS[name].extra["info"]
    assert info.name == name
    assert DATASETS[name].summary
    assert info.channels in (1, 3)
    assert len(info.mean) == len(info.std) == info.channels
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
    assert info.image_size in (28, 32)
    assert info.train_size > info.test_size > 0
    assert len(info.classes) == info.num_classes == len(set(info.classes))
    assert info.augment in ("none", "crop", "crop-flip")


def test_published_constants() -> None:
    fm = dataset_info("fashion-mnist")
    assert (fm.mean, fm.std, fm.train_size, fm.test_size) == ((0.2860,), (0.3530,), 60000, 10000)
    assert dataset_info("mnist").mean == (0.1307,)
    assert dataset_info("cifar10").std == (0.2471, 0.2435, 0.2616)
    assert dataset_info("cifar100").num_classes == 100
    svhn = dataset_info("svhn")
    assert (svhn.train_size, svhn.test_size, svhn.augment) == (73257, 26032, "crop")
    assert dataset_info("cifar10").augment == "crop-flip"
    assert dataset_info("mnist").augment == "none"


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        dataset_info("imagenet")
    with pytest.raises(UnknownNameError, match="cifar10"):
        load_dataset("imagenet", "test", tmp_path, download=False)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", DATASETS.names())
def test_round_trip(name: str, split: str, tmp_path: Path) -> None:
    expected = WRITERS[name](tmp_path)
    info = dataset_info(name)
    s = load_dataset(name, split, tmp_path, download=False)
    assert isinstance(s, ImageSet) and s.info is info
    n = SIZES[split]
    assert len(s) == n
    assert s.x.shape == (n, info.channels, info.image_size, info.image_size)
    assert s.x.dtype == torch.uint8 and s.y.dtype == torch.int64
    assert s.y.shape == (n,)
    assert int(s.y.min()) >= 0 and int(s.y.max()) < info.num_classes
    ex, ey = expected[split]
    assert np.array_equal(s.x.numpy(), ex)  # exact pixels, channel order included
    assert np.array_equal(s.y.numpy(), ey)
    imgs = s.images()
    assert imgs.dtype == torch.float32 and imgs.shape == s.x.shape
    assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
    assert torch.equal(imgs, s.x.float() / 255)


def test_cifar_channel_planes(tmp_path: Path) -> None:
    """A CIFAR row is 1024 red, 1024 green, 1024 blue values, each row-major 32x32."""
    expected = write_cifar10(tmp_path)
    s = load_dataset("cifar10", "test", tmp_path, download=False)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        row = pickle.load(fh)[b"data"][2]
    assert np.array_equal(s.x[2, 1].numpy(), row[1024:2048].reshape(32, 32))
    assert np.array_equal(s.x.numpy(), expected["test"][0])


def test_svhn_layout_and_label_ten_is_zero(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    mat = scipy.io.loadmat(str(tmp_path / "svhn" / "train_32x32.mat"))
    s = load_dataset("svhn", "train", tmp_path, download=False)
    assert int(s.y[0]) == 0 and int(s.y[1]) == 1  # 10 -> 0, 1 stays 1
    assert int(s.x[3, 2, 5, 7]) == int(mat["X"][5, 7, 2, 3])  # [H, W, C, N] -> [N, C, H, W]


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_every_pickle_protocol(protocol: int, tmp_path: Path) -> None:
    expected = write_cifar100(tmp_path, protocol=protocol)
    s = load_dataset("cifar100", "train", tmp_path, download=False)
    assert np.array_equal(s.x.numpy(), expected["train"][0])
    assert np.array_equal(s.y.numpy(), expected["train"][1])


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 str opcodes (SHORT_BINSTRING/BINSTRING), as the real CIFAR
    files hold them; read with encoding="latin1" they come back as str."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_cifar_python2_style_pickle(tmp_path: Path) -> None:
    """Keys and array data as Python 2 str, arrays from ``numpy.core`` (the pre-2.0 name)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = _rng(9).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump({b"data": x, b"labels": [3, 1, 4]})
        raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"numpy.core.multiarray\n" in raw
        (folder / name).write_bytes(raw)
    s = load_dataset("cifar10", "train", tmp_path, download=False)
    assert len(s) == 15
    assert np.array_equal(s.x[:3].numpy(), x.reshape(3, 3, 32, 32))
    assert s.y[:3].tolist() == [3, 1, 4]


# ----------------------------------------------------------------------------- IDX layouts


def test_idx_uncompressed(tmp_path: Path) -> None:
    expected = write_mnist_like(tmp_path / "mnist", gz=False)
    s = load_dataset("mnist", "test", tmp_path, download=False)
    assert np.array_equal(s.x.numpy(), expected["test"][0])


@pytest.mark.parametrize(
    ("name", "folder"), [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")]
)
def test_torchvision_raw_layout(name: str, folder: str, tmp_path: Path) -> None:
    """torchvision leaves both the .gz and the extracted files in <root>/<Class>/raw/."""
    raw = tmp_path / folder / "raw"
    expected = write_mnist_like(raw, gz=False)
    write_mnist_like(raw, gz=True)  # same content (same seed)
    s = load_dataset(name, "train", tmp_path, download=False)
    assert np.array_equal(s.x.numpy(), expected["train"][0])


def test_own_folder_wins_over_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "debian"
    write_mnist_like(debian, seed=11)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    # Without a copy under the data directory, Debian's is read.
    from_debian = load_dataset("fashion-mnist", "test", root, download=False)
    expected_own = write_mnist_like(root / "fashion-mnist", seed=12)
    own = load_dataset("fashion-mnist", "test", root, download=False)
    assert np.array_equal(own.x.numpy(), expected_own["test"][0])
    assert not torch.equal(own.x, from_debian.x)


def test_bench_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_like(tmp_path / "mnist")
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist", "train", download=False)) == SIZES["train"]


# ----------------------------------------------------------------------------- limit, subset, to


def test_split_must_be_train_or_test(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "mnist")
    with pytest.raises(UsageError, match="train, test"):
        load_dataset("mnist", "val", tmp_path, download=False)


def test_limit(tmp_path: Path) -> None:
    expected = write_mnist_like(tmp_path / "mnist")
    s = load_dataset("mnist", "train", tmp_path, limit=3, download=False)
    assert len(s) == 3 and np.array_equal(s.x.numpy(), expected["train"][0][:3])
    assert len(load_dataset("mnist", "train", tmp_path, limit=SIZES["train"], download=False)) == 7
    for bad in (0, -1):
        with pytest.raises(UsageError, match="positive"):
            load_dataset("mnist", "train", tmp_path, limit=bad, download=False)
    with pytest.raises(UsageError, match=r"\(7 points\)"):
        load_dataset("mnist", "train", tmp_path, limit=8, download=False)


def test_subset_images_to(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    s = load_dataset("cifar10", "test", tmp_path, download=False)
    sub = s.subset(2)
    assert len(sub) == 2 and torch.equal(sub.x, s.x[:2]) and torch.equal(sub.y, s.y[:2])
    assert sub.info is s.info
    for bad in (0, len(s) + 1):
        with pytest.raises(UsageError, match=str(len(s))):
            s.subset(bad)
    part = s.images(torch.tensor([4, 0]))
    assert part.shape == (2, 3, 32, 32) and torch.equal(part[1], s.x[0].float() / 255)
    assert torch.equal(s.images(slice(1, 3)), s.x[1:3].float() / 255)
    moved = s.to("meta")
    assert moved.x.device.type == "meta" and moved.y.device.type == "meta"
    assert moved.x.dtype == torch.uint8 and moved.info is s.info
    assert s.x.device.type == "cpu"


def test_returned_tensors_are_the_callers(tmp_path: Path) -> None:
    """Loads may share a cache, but what one caller changes another never sees."""
    write_mnist_like(tmp_path / "mnist")
    a = load_dataset("mnist", "train", tmp_path, download=False)
    before = a.x.clone()
    a.x.zero_()
    a.y.fill_(3)
    b = load_dataset("mnist", "train", tmp_path, download=False)
    assert torch.equal(b.x, before) and not torch.equal(b.y, a.y)


# ----------------------------------------------------------------------------- missing, corrupt


@pytest.mark.parametrize("name", DATASETS.names())
def test_missing_without_download(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        load_dataset(name, "test", tmp_path, download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path) in msg and "--data-dir" in msg and name in msg


def test_missing_fashion_mnist_names_debian_package(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        load_dataset("fashion-mnist", "train", tmp_path, download=False)
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "apt-get install" in msg
    assert str(tmp_path / "fashion-mnist") in msg and str(tmp_path / "no-debian") in msg


def _patch_download(
    monkeypatch: pytest.MonkeyPatch, name: str, fn: Callable[[Path, str], None]
) -> None:
    entry = DATASETS[name]
    fmt = dataclasses.replace(entry.extra["format"], download=fn)
    monkeypatch.setitem(entry.extra, "format", fmt)  # type: ignore[arg-type]


def test_failed_download_is_one_usage_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: Path, split: str) -> None:
        raise URLError("[Errno -2] Name or service not known")

    _patch_download(monkeypatch, "fashion-mnist", offline)
    with pytest.raises(UsageError) as err:
        load_dataset("fashion-mnist", "test", tmp_path)
    msg = str(err.value)
    assert "could not be downloaded" in msg and "URLError" in msg
    assert "dataset-fashion-mnist" in msg and "\n" not in msg


def test_download_then_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[Path, str]] = []

    def fake(root: Path, split: str) -> None:
        print("Downloading...")  # torchvision's chatter must not reach stdout
        calls.append((root, split))
        write_mnist_like(root / "MNIST" / "raw")

    _patch_download(monkeypatch, "mnist", fake)
    s = load_dataset("mnist", "test", tmp_path)
    assert calls == [(tmp_path.resolve(), "test")] and len(s) == SIZES["test"]
    out = capsys.readouterr()
    assert "Downloading" not in out.out and "Downloading" in out.err
    load_dataset("mnist", "test", tmp_path)  # found now: no second download
    assert len(calls) == 1


def _corrupt_truncated(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))


def _corrupt_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0] = 0x12
    path.write_bytes(gzip.compress(bytes(raw)))


def _corrupt_gzip_cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _corrupt_type(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0D  # float
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize(
    "corrupt", [_corrupt_truncated, _corrupt_magic, _corrupt_gzip_cut, _corrupt_type]
)
def test_corrupt_idx(corrupt: Callable[[Path], None], tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "fashion-mnist")
    bad = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    corrupt(bad)
    with pytest.raises(UsageError, match=str(bad)):
        load_dataset("fashion-mnist", "train", tmp_path, download=False)


def test_idx_wrong_image_size_and_label_count(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_mnist_like(folder)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((5, 27, 27), np.uint8))
    with pytest.raises(UsageError, match="28, 28"):
        load_dataset("mnist", "test", tmp_path, download=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(UsageError, match="7 labels"):
        load_dataset("mnist", "train", tmp_path, download=False)


def test_labels_out_of_range(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_mnist_like(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(5, 10, np.uint8))
    with pytest.raises(UsageError, match="0..9"):
        load_dataset("mnist", "test", tmp_path, download=False)


def test_corrupt_cifar_and_svhn(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UsageError, match="test_batch"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(UsageError, match="3072"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    write_svhn(tmp_path)
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(UsageError, match="test_32x32.mat"):
        load_dataset("svhn", "test", tmp_path, download=False)


class _Evil:
    """Unpickling this would run ``target(*args)``."""

    def __init__(self, target: Callable[..., object], *args: object) -> None:
        self.target, self.args = target, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.target, self.args


@pytest.mark.parametrize("how", ["os.system", "subprocess.call"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_code(how: str, protocol: int, tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    if how == "os.system":
        evil = _Evil(os.system, f"echo pwned > {marker}")
    else:
        evil = _Evil(subprocess.call, ["touch", str(marker)])
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(batch, "wb") as fh:
        pickle.dump({b"data": evil, b"labels": [0]}, fh, protocol=protocol)
    with pytest.raises(UsageError, match="refusing to load global"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    with pytest.raises(UsageError, match="refusing"):
        data.restricted_load(batch)
    assert not marker.exists()


def test_restricted_codecs_encode_only_latin1(tmp_path: Path) -> None:
    """Protocol-2 pickles use _codecs.encode for bytes; no other codec is let through."""
    path = tmp_path / "p"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(UsageError, match="latin1"):
        data.restricted_load(path)


# ----------------------------------------------------------------------------- the real thing


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_debian_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", Path("/usr/share/datasets/fashion-mnist"))
    info = dataset_info("fashion-mnist")
    for split, n in (("train", 60000), ("test", 10000)):
        s = load_dataset("fashion-mnist", split, tmp_path / "empty", download=False)
        assert len(s) == n == (info.train_size if split == "train" else info.test_size)
        assert s.x.shape == (n, 1, 28, 28) and s.x.dtype == torch.uint8
        counts = torch.bincount(s.y, minlength=10)
        assert counts.tolist() == [n // 10] * 10  # balanced, 10 classes
        mean = s.images().mean().item()
        assert abs(mean - info.mean[0]) < 0.005
