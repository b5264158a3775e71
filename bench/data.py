"""Image data sets read from their official on-disk formats into uint8 NCHW tensors.

Each data set is looked for in a few known places under the data directory (``--data-dir``,
``$BENCH_DATA_DIR`` or ``<home>/data``, see :func:`bench.paths.data_dir`), and downloaded with
torchvision's URLs and checksums when missing and allowed. The files are parsed here, not by
torchvision's dataset classes: IDX with numpy, CIFAR's pickles with a restricted unpickler (so
that reading data never runs code from a file), SVHN's MATLAB files with scipy. Nothing is
cached on disk; parsed arrays are kept in a small in-process cache and copied on the way out.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gzip
import os
import pickle
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from bench.errors import UsageError
from bench.paths import data_dir as _resolve_data_dir
from bench.registry import Registry

SPLITS = ("train", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Downloads must fail rather than hang when the network is half there.
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set; ``mean``/``std`` are per channel on the [0, 1] pixel scale."""

    name: str
    channels: int
    image_size: int  # H == W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int  # official split sizes
    test_size: int
    augment: str  # what training applies on the device: "none" | "crop" | "crop-flip"
    classes: tuple[str, ...] = ()


@dataclass
class ImageSet:
    """Images kept as uint8 ``[N, C, H, W]`` (4x less memory than float) with int64 labels."""

    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> ImageSet:
        """The same points on ``device``."""
        return ImageSet(self.x.to(device), self.y.to(device), self.info)

    def images(self, idx: Any = None) -> torch.Tensor:
        """float32 images in [0, 1]: all of them, or ``x[idx]``."""
        x = self.x if idx is None else self.x[idx]
        return x.float() / 255

    def subset(self, n: int) -> ImageSet:
        """The first ``n`` points: a fixed subset, as RobustBench takes the first n test points."""
        if n <= 0 or n > len(self):
            raise UsageError(
                f"cannot take {n} points of {self.info.name}: the set holds {len(self)} "
                f"(choose 1..{len(self)})"
            )
        return ImageSet(self.x[:n], self.y[:n], self.info)


DATASETS: Registry[ImageSet] = Registry("data set")

_Arrays = tuple[np.ndarray, np.ndarray]  # uint8 [N, C, H, W], int64 [N]


@dataclass(frozen=True)
class _Format:
    """How one data set is found, read and downloaded."""

    folders: Callable[[Path], list[Path]]  # where to look, in order, given the data root
    files: Callable[[str], tuple[str, ...]]  # the files a split needs (IDX: without .gz)
    read: Callable[[list[Path], DatasetInfo], _Arrays]
    download: Callable[[Path, str], None]
    hint: Callable[[Path], str]  # what the user can do when it is missing
    gzipped_ok: bool = False  # IDX files come as .gz or not; other formats only as named


# ----------------------------------------------------------------------------- IDX (MNISTs)

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _data_file(folder: Path, name: str, gzipped_ok: bool) -> Path | None:
    """``name`` (or ``name.gz`` where allowed) in ``folder``; torchvision's raw/ holds both."""
    cands = (folder / name, folder / f"{name}.gz") if gzipped_ok else (folder / name,)
    for cand in cands:
        if cand.is_file():
            return cand
    return None


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (names can't be trusted)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError; truncation gives EOFError
        raise UsageError(f"cannot read {path}: {exc}") from None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST format), checking magic and sizes."""
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UsageError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise UsageError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise UsageError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise UsageError(
            f"{path}: IDX header promises {expected} bytes for shape {dims}, "
            f"file holds {len(data) - header} (truncated or wrong file?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_pair(paths: list[Path], info: DatasetInfo) -> _Arrays:
    """Images and labels of one MNIST-style split."""
    img_path, lab_path = paths
    x, y = read_idx(img_path), read_idx(lab_path)
    if x.ndim != 3 or x.shape[1:] != (info.image_size, info.image_size):
        raise UsageError(
            f"{img_path}: expected images of shape [N, {info.image_size}, {info.image_size}], "
            f"got {list(x.shape)}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UsageError(f"{lab_path}: expected {x.shape[0]} labels, got shape {list(y.shape)}")
    return x[:, None], y


def _idx_folders(
    own: str, torchvision_name: str, system_wide: bool = False
) -> Callable[[Path], list[Path]]:
    """``<root>/<own>/``, then Debian's copy if ``system_wide``, then torchvision's raw/ layout."""

    def folders(root: Path) -> list[Path]:
        # DEBIAN_FASHION_MNIST is read at call time so tests can point it elsewhere.
        extra = [DEBIAN_FASHION_MNIST] if system_wide else []
        return [root / own, *extra, root / torchvision_name / "raw"]

    return folders


def _torchvision_idx_download(class_name: str) -> Callable[[Path, str], None]:
    """Download with torchvision's class (it knows the mirrors); it writes <root>/<Class>/raw/."""

    def download(root: Path, split: str) -> None:
        import torchvision.datasets as tvd  # here: torchvision is slow to import; downloads only

        getattr(tvd, class_name)(str(root), train=split == "train", download=True)

    return download


# ----------------------------------------------------------------------------- CIFAR pickles


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as pickles of protocol <= 2 use it for bytes; only latin1 is let in."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only latin1 _codecs.encode is allowed")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy callables that rebuild plain arrays, under the module names old and new
    pickles use (the real CIFAR files were written by Python 2 with ``numpy.core``)."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed core to _core
    reconstruct = core.multiarray._reconstruct
    frombuffer = core.numeric._frombuffer
    scalar = core.multiarray.scalar
    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{mod}.multiarray", "scalar")] = scalar
        out[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists and numpy arrays and nothing else.

    A pickle can name any importable callable (``os.system``...) and have it called; data
    files should never be able to do that, so every global outside a short list is refused.
    """

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a UsageError."""
    try:
        with open(path, "rb") as fh:
            # latin1 is what numpy needs to read arrays pickled by Python 2 (the real CIFAR files).
            return RestrictedUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - corrupt pickles fail in many ways (struct.error...)
        raise UsageError(f"cannot read {path}: {exc}") from None


def _key(d: dict[Any, Any], key: str, path: Path) -> Any:
    """``d[key]`` under a str or bytes key (Python 2 pickles give either, by encoding)."""
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise UsageError(f"{path}: no {key!r} entry (not a CIFAR python batch?)")


def _cifar_reader(label_key: str) -> Callable[[list[Path], DatasetInfo], _Arrays]:
    """Read and concatenate CIFAR python batches (dicts with data [N, 3072] and labels)."""

    def read(paths: list[Path], info: DatasetInfo) -> _Arrays:
        xs, ys = [], []
        side = info.image_size
        for path in paths:
            batch = restricted_load(path)
            if not isinstance(batch, dict):
                raise UsageError(f"{path}: expected a dict, got {type(batch).__name__}")
            x = _key(batch, "data", path)
            y = np.asarray(_key(batch, label_key, path))
            row = 3 * side * side
            if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape[1:] == (row,)):
                shape = getattr(x, "shape", None)
                raise UsageError(f"{path}: expected uint8 data of shape [N, {row}], got {shape}")
            if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
                raise UsageError(
                    f"{path}: expected {x.shape[0]} integer labels, got shape {list(y.shape)}"
                )
            xs.append(x.reshape(-1, 3, side, side))  # rows are R plane, G plane, B plane
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    return read


def _cifar_download(class_name: str) -> Callable[[Path, str], None]:
    """Fetch and extract the official archive with torchvision's URL and md5.

    torchvision's CIFAR classes would then read the batches with an unrestricted pickle.load;
    only its download helper is used, and the batches are read here.
    """

    def download(root: Path, split: str) -> None:
        import torchvision.datasets as tvd  # here: torchvision is slow to import; downloads only
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, class_name)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)

    return download


# ----------------------------------------------------------------------------- SVHN .mat


def _read_svhn(paths: list[Path], info: DatasetInfo) -> _Arrays:
    """Read an SVHN ``*_32x32.mat`` file: X [32, 32, 3, N] uint8, y [N, 1] with 10 meaning 0."""
    import scipy.io  # here: only SVHN needs scipy

    (path,) = paths
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy reports corrupt files in many ways
        raise UsageError(f"cannot read {path}: {exc}") from None
    x, y = mat.get("X"), mat.get("y")
    side = info.image_size
    if not (
        isinstance(x, np.ndarray)
        and x.dtype == np.uint8
        and x.ndim == 4
        and x.shape[:3] == (side, side, 3)
    ):
        raise UsageError(f"{path}: expected uint8 X of shape [{side}, {side}, 3, N]")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3]:
        raise UsageError(f"{path}: expected {x.shape[3]} labels in y")
    y = y.reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN writes digit 0 as class 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y  # H, W, C, N -> N, C, H, W


def _svhn_download(root: Path, split: str) -> None:
    """Fetch ``<split>_32x32.mat`` (not ``extra``) with torchvision's URL and md5."""
    import torchvision.datasets as tvd  # here: torchvision is slow to import; downloads only
    from torchvision.datasets.utils import download_url

    url, filename, md5 = tvd.SVHN.split_list[split]
    download_url(url, str(root / "svhn"), filename, md5)


# ----------------------------------------------------------------------------- finding and loading


def _find(fmt: _Format, root: Path, split: str) -> list[Path] | None:
    """The first folder holding every file the split needs, as a list of paths."""
    for folder in fmt.folders(root):
        found = [_data_file(folder, name, fmt.gzipped_ok) for name in fmt.files(split)]
        if all(p is not None for p in found):
            return [p for p in found if p is not None]
    return None


@contextlib.contextmanager
def _quiet_and_bounded() -> Iterator[None]:
    """torchvision prints progress on stdout, which may carry machine-readable output: send it
    to stderr; and give sockets a timeout so a dead network fails instead of hanging."""
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        socket.setdefaulttimeout(old_timeout)


@functools.lru_cache(maxsize=4)
def _read_cached(name: str, files: tuple[tuple[str, int, int], ...]) -> _Arrays:
    """Parsed arrays, read-only, keyed by the files' paths, mtimes and sizes (so edits show)."""
    entry = DATASETS[name]
    info: DatasetInfo = entry.extra["info"]
    fmt: _Format = entry.extra["format"]
    x, y = fmt.read([Path(f[0]) for f in files], info)
    x = np.ascontiguousarray(x, dtype=np.uint8)
    y = np.asarray(y, dtype=np.int64)
    if x.shape[0] != y.shape[0]:
        raise UsageError(f"{name}: {x.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= info.num_classes):
        raise UsageError(
            f"{name}: labels must lie in 0..{info.num_classes - 1}, found {y.min()}..{y.max()} "
            f"in {', '.join(f[0] for f in files)}"
        )
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    download: bool = True,
) -> ImageSet:
    """The loader registered for each data set; see :func:`load_dataset`."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if limit is not None and limit <= 0:
        raise UsageError(f"limit must be positive, got {limit}")
    entry = DATASETS[name]
    info: DatasetInfo = entry.extra["info"]
    fmt: _Format = entry.extra["format"]
    root = _resolve_data_dir(data_dir)

    paths = _find(fmt, root, split)
    failure = "download is off"
    if paths is None and download:
        try:
            with _quiet_and_bounded():
                fmt.download(root, split)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch becomes one usage line
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]  # one short line
            failure = f"could not be downloaded (offline? {reason})"
        else:
            failure = "was not there after downloading"
        paths = _find(fmt, root, split)
    if paths is None:
        folders = [str(f) for f in fmt.folders(root)]
        looked = ", ".join(folders[:-1]) + " or " + folders[-1] if len(folders) > 1 else folders[0]
        raise UsageError(
            f"{name} {split} split not found in {looked} and {failure}; {fmt.hint(root)}"
        )

    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    x, y = _read_cached(name, key)
    n = x.shape[0] if limit is None else limit
    if n > x.shape[0]:
        raise UsageError(
            f"limit {limit} is larger than the {split} split of {name} ({x.shape[0]} points)"
        )
    # Copies: the cache stays intact whatever the caller does with the tensors.
    return ImageSet(torch.from_numpy(x[:n].copy()), torch.from_numpy(y[:n].copy()), info)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered under ``name`` (UnknownNameError lists valid names)."""
    return DATASETS[name].extra["info"]


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    download: bool = True,
) -> ImageSet:
    """Load ``split`` ("train" or "test") of data set ``name``; ``limit`` keeps the first points.

    Missing files are downloaded when ``download`` is true; when that is off or fails, the
    UsageError says where it looked and what to do.
    """
    return DATASETS[name].factory(split, data_dir, limit=limit, download=download)


def _data_dir_hint(folder: str, what: str) -> Callable[[Path], str]:
    return lambda root: (
        f"put {what} in DIR/{folder}/ and pass --data-dir DIR (data_dir= in Python; or set "
        f"$BENCH_DATA_DIR=DIR; "
        f"now {root})"
    )


def _register(info: DatasetInfo, fmt: _Format, summary: str) -> None:
    DATASETS.add(
        info.name,
        functools.partial(_load, info.name),
        summary,
        info=info,
        format=fmt,
    )


_DIGITS = tuple(str(i) for i in range(10))

_CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)

_register(
    DatasetInfo(
        "fashion-mnist",
        1,
        28,
        10,
        (0.2860,),
        (0.3530,),
        60000,
        10000,
        "none",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    _Format(
        folders=_idx_folders("fashion-mnist", "FashionMNIST", system_wide=True),
        files=lambda split: _IDX_NAMES[split],
        read=_read_idx_pair,
        download=_torchvision_idx_download("FashionMNIST"),
        hint=lambda root: (
            "install Debian's package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass --data-dir DIR (data_dir= in Python) "
            "holding fashion-mnist/ with the four IDX files (or set $BENCH_DATA_DIR)"
        ),
        gzipped_ok=True,
    ),
    "Fashion-MNIST: 1x28x28 greyscale clothing, 10 classes, 60000/10000 (default)",
)
_register(
    DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), 60000, 10000, "none", _DIGITS),
    _Format(
        folders=_idx_folders("mnist", "MNIST"),
        files=lambda split: _IDX_NAMES[split],
        read=_read_idx_pair,
        download=_torchvision_idx_download("MNIST"),
        hint=_data_dir_hint("mnist", "the four MNIST IDX files (train-images-idx3-ubyte.gz, ...)"),
        gzipped_ok=True,
    ),
    "MNIST: 1x28x28 handwritten digits, 10 classes, 60000/10000",
)
_register(
    DatasetInfo(
        "cifar10",
        3,
        32,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2471, 0.2435, 0.2616),
        50000,
        10000,
        "crop-flip",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    _Format(
        folders=lambda root: [root / "cifar-10-batches-py"],
        files=lambda split: (
            tuple(f"data_batch_{i}" for i in range(1, 6)) if split == "train" else ("test_batch",)
        ),
        read=_cifar_reader("labels"),
        download=_cifar_download("CIFAR10"),
        hint=_data_dir_hint(
            "cifar-10-batches-py", "the extracted CIFAR-10 python batches (cifar-10-python.tar.gz)"
        ),
    ),
    "CIFAR-10: 3x32x32 colour, 10 classes, 50000/10000",
)
_register(
    DatasetInfo(
        "cifar100",
        3,
        32,
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        50000,
        10000,
        "crop-flip",
        _CIFAR100_CLASSES,
    ),
    _Format(
        folders=lambda root: [root / "cifar-100-python"],
        files=lambda split: (split,),
        read=_cifar_reader("fine_labels"),
        download=_cifar_download("CIFAR100"),
        hint=_data_dir_hint(
            "cifar-100-python", "the extracted CIFAR-100 python files (cifar-100-python.tar.gz)"
        ),
    ),
    "CIFAR-100: 3x32x32 colour, 100 fine classes, 50000/10000",
)
_register(
    DatasetInfo(
        "svhn",
        3,
        32,
        10,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        73257,
        26032,
        "crop",
        _DIGITS,
    ),
    _Format(
        folders=lambda root: [root / "svhn"],
        files=lambda split: (f"{split}_32x32.mat",),
        read=_read_svhn,
        download=_svhn_download,
        hint=_data_dir_hint("svhn", "train_32x32.mat / test_32x32.mat"),
    ),
    "SVHN: 3x32x32 house-number digits, 10 classes, 73257/26032 (train split, no extra)",
)
