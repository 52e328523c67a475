"""Datasets as uint8 tensors, decoded once and cached.

Sources:
- ``cifar10`` / ``cifar100``: torchvision's archives (downloaded into the cache folder
  when online, or read from ``data_dir``). When ``data_dir`` is instead an ImageFolder
  tree or archive, it is read as a folder (how the shared CIFAR-10 JPEG copy is used).
- ``folder``: an ImageFolder tree with ``train/`` and ``test/`` (or ``val/``) folders of
  class folders, or a ``.tar.gz``/``.tgz``/``.tar`` of one.

Every image is decoded once with Pillow (RGB, resized to ``input_size`` when it differs),
stored as ``uint8 [N, 3, H, W]``, and cached under a key made of the source's content
and the selection, so a changed folder or archive is re-read.

Limits (a source can come from a stranger): an archive member over ``MAX_MEMBER_BYTES`` is
skipped unread, an archive holding more than ``MAX_ARCHIVE_HELD_BYTES`` of images is refused,
an image over ``MAX_IMAGE_PIXELS`` is skipped from its header before any pixel is decoded,
and a dataset needs at least two classes. Uploaded archives are checked more strictly by
``app.archives`` before they reach this module.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from . import settings
from .checkpoint import atomic_save
from .config import DataConfig

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
# Pillow identifies files by content, not name: only these decoders are ever tried.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "PPM", "TIFF")
MAX_IMAGE_PIXELS = 4_000_000              # per image (e.g. 2000×2000), read from the header
MAX_MEMBER_BYTES = 5_000_000              # per archive member; larger ones are skipped unread
MAX_ARCHIVE_HELD_BYTES = 1_000_000_000    # archive members are held in memory until decoded
MIN_CLASSES = 2
TEST_DIRS = ("test", "val")
CACHE_VERSION = 3  # 2: the blob carries the training split's channel statistics; 3: validation capped at half a class


class DataError(ValueError):
    """Bad or missing data; the message says what was expected."""


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than the cap; nothing was decoded."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


TRAIN_PROBE = 1000   # training images watched per epoch when no validation split is held out


@dataclass
class Dataset:
    name: str
    description: str
    classes: list[str]
    train: Split
    test: Split
    val: Split | None = None
    skipped: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_val(self) -> bool:
        return self.val is not None and len(self.val) > 0

    @property
    def eval_split(self) -> Split:
        """The split watched during training: validation if held out, else a fixed, evenly
        spaced probe of ``TRAIN_PROBE`` training images (seen in training: it shows fit, not
        generalisation). Never the test split, which is used once per model at the end."""
        if self.has_val:
            return self.val
        if "probe" not in self.__dict__:
            n = len(self.train)
            idx = torch.linspace(0, n - 1, min(TRAIN_PROBE, n)).round().long()
            self.__dict__["probe"] = Split(self.train.images[idx], self.train.labels[idx])
        return self.__dict__["probe"]

    @property
    def eval_split_name(self) -> str:
        return "val" if self.has_val else "train-probe"


def default_cache_dir() -> Path:
    """``INDISTILL_CACHE``, else ~/.cache/indistill (:func:`app.settings.cache_dir`)."""
    return settings.cache_dir()


# ---------------------------------------------------------------- decoding

def open_image(data: bytes | str | Path) -> Image.Image:
    """Open lazily (header only) with the accepted decoders; Pillow's own bomb check still applies."""
    return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=IMAGE_FORMATS)


def check_pixels(img: Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> int:
    """Width × height from the header; ImageTooLarge over ``max_pixels``."""
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"too large: {w}×{h} px > {max_pixels:,} px cap")
    return w * h


def decode_image(data: bytes | str | Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Bytes or path → ``uint8 [size, size, 3]`` RGB (first frame; resized if needed).

    ImageTooLarge, before decoding, when the header claims more than ``max_pixels``."""
    try:
        img = open_image(data)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"too large: over Pillow's bomb limit, > {max_pixels:,} px cap") from None
    with img:
        check_pixels(img, max_pixels)
        img.seek(0)
        rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _stack(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- ImageFolder trees and archives

@dataclass
class _Listing:
    """Files of one split by class: class name → sorted list of (name, loader)."""

    files: dict[str, list[tuple[str, Callable[[], bytes | str]]]]


def _split_of(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(split, class, file) from a path's last components, if it looks like split/class/file."""
    if len(parts) < 3 or Path(parts[-1]).suffix.lower() not in IMAGE_EXTS:
        return None
    split, cls, name = parts[-3], parts[-2], parts[-1]
    return (split, cls, name) if split in ("train",) + TEST_DIRS and not name.startswith(".") else None


def fingerprint(path: Path) -> str:
    """Content key of a folder source: archive bytes, or every image's path, size and mtime."""
    digest = hashlib.sha1()
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    for split in ("train",) + TEST_DIRS:
        for f in sorted((path / split).glob("*/*")):
            if f.suffix.lower() in IMAGE_EXTS:
                st = f.stat()
                digest.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _list_directory(root: Path) -> dict[str, _Listing]:
    splits: dict[str, dict] = {}
    for split in ("train",) + TEST_DIRS:
        d = root / split
        if not d.is_dir():
            continue
        per_class: dict[str, list] = defaultdict(list)
        for cls_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                    per_class[cls_dir.name].append((f.name, lambda f=f: str(f)))
        splits[split] = per_class
    return {k: _Listing(dict(v)) for k, v in splits.items()}


def _list_archive(path: Path, skipped: list[str], max_member_bytes: int = MAX_MEMBER_BYTES,
                  max_held_bytes: int = MAX_ARCHIVE_HELD_BYTES) -> dict[str, _Listing]:
    """One pass over a tar: image members up to ``max_member_bytes`` are read (they are decoded
    next, then cached); larger ones are skipped unread and named in ``skipped``."""
    splits: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    held = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                where = _split_of(Path(member.name).parts) if member.isfile() else None
                if where is None:
                    continue
                split, cls, name = where
                if member.size > max_member_bytes:
                    skipped.append(f"{cls}/{name} (too large: {member.size:,} bytes > {max_member_bytes:,} byte cap)")
                    continue
                held += member.size
                if held > max_held_bytes:
                    raise DataError(f"{path}: the images add up to more than {max_held_bytes:,} bytes, the most read "
                                    "from an archive into memory; extract it and point data_dir at the folder")
                data = tar.extractfile(member).read()  # member.size bytes, within the cap
                splits[split][cls].append((name, lambda data=data: data))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}. Expected a .tar.gz/.tgz/.tar of an ImageFolder tree "
                        "(train/<class>/*.jpg and test/<class>/*.jpg)") from None
    return {k: _Listing({c: sorted(v) for c, v in sorted(cls.items())}) for k, cls in splits.items()}


def held_out(n: int, val_per_class: int | None) -> int:
    """Validation images taken from a class with ``n`` training images: ``val_per_class``,
    but never more than half of them (a small uploaded dataset keeps images to train on)."""
    return min(val_per_class or 0, n // 2)


def _select(listing: _Listing, classes: list[str], per_class: int | None, skip: int = 0, val: bool = False
            ) -> list[tuple[int, str, Callable]]:
    """Per class, the first ``held_out(n, skip)`` files (``val``) or up to ``per_class`` after them."""
    out = []
    for label, cls in enumerate(classes):
        files = listing.files.get(cls, [])
        k = held_out(len(files), skip)
        files = files[:k] if val else files[k:] if per_class is None else files[k:k + per_class]
        out += [(label, f"{cls}/{name}", load) for name, load in files]
    return out


def _decode_all(items: Iterable[tuple[int, str, Callable]], size: int, skipped: list[str]) -> Split:
    arrays, labels = [], []
    for label, name, load in items:
        try:
            arrays.append(decode_image(load(), size))
            labels.append(label)
        except ImageTooLarge as exc:
            skipped.append(f"{name} ({exc})")
        except Exception as exc:  # unreadable image: count it, say which, keep going
            skipped.append(f"{name} ({type(exc).__name__})")
    return Split(_stack(arrays, size), torch.tensor(labels, dtype=torch.long))


def read_image_folder(path: Path) -> dict:
    """List an ImageFolder tree or archive and check its layout (no decoding yet).

    ``skipped`` in the result names archive members left unread (too large)."""
    skipped: list[str] = []
    if path.is_dir():
        splits = _list_directory(path)
    elif path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar"))):
        splits = _list_archive(path, skipped)
    else:
        raise DataError(f"{path} is neither a folder nor a .tar.gz/.tgz/.tar archive")
    test_name = next((s for s in TEST_DIRS if s in splits), None)
    if "train" not in splits or test_name is None:
        raise DataError(f"{path}: expected an ImageFolder tree with train/ and test/ (or val/) subfolders, "
                        f"each holding one folder of images per class; found splits: {sorted(splits) or 'none'}")
    classes = sorted(splits["train"].files)
    if not classes:
        raise DataError(f"{path}: train/ has no class folders with images ({', '.join(sorted(IMAGE_EXTS))})")
    if len(classes) < MIN_CLASSES:
        raise DataError(f"{path}: a dataset needs at least {MIN_CLASSES} classes; found {len(classes)}: "
                        f"{', '.join(classes)}. Accepted: train/ and test/ each holding one folder of images per "
                        f"class, at least {MIN_CLASSES} classes (with one, every prediction is right and nothing "
                        "is learnt)")
    test_classes = sorted(splits[test_name].files)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DataError(f"{path}: train/ and {test_name}/ class folders differ (only in train: {only_train or '-'}; "
                        f"only in {test_name}: {only_test or '-'}); both must list the same classes")
    return {"classes": classes, "listing": splits, "test_name": test_name, "skipped": skipped}


# ---------------------------------------------------------------- torchvision CIFAR

def read_cifar(name: str, cfg: DataConfig, root: Path) -> dict:
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    have = (root / folder).is_dir()
    if not have and not cfg.download:
        raise DataError(f"{name}: no {folder}/ under {root} and download is off. Point data_dir at a folder that "
                        f"holds {folder}/, or turn download on, or use dataset=folder with an ImageFolder tree/archive")
    try:
        train = cls(str(root), train=True, download=not have)
        test = cls(str(root), train=False, download=False)
    except Exception as exc:  # no network, truncated download, corrupt batches
        raise DataError(f"{name}: could not {'read' if have else 'download'} the dataset into {root} "
                        f"({type(exc).__name__}: {exc}). Offline? Pass data_dir pointing at a folder holding {folder}/, "
                        "or an ImageFolder tree or .tar.gz of one (e.g. the shared cifar10-jpeg.tar.gz)") from None
    return {"classes": list(train.classes), "train": (train.data, np.asarray(train.targets)),
            "test": (test.data, np.asarray(test.targets))}


def _per_class(labels: np.ndarray, n_classes: int, per_class: int | None, skip: int = 0, val: bool = False
               ) -> np.ndarray:
    idx = []
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        k = held_out(len(rows), skip)
        idx.append(rows[:k] if val else rows[k:None if per_class is None else k + per_class])
    return np.sort(np.concatenate(idx)) if idx else np.zeros(0, dtype=np.int64)


def _cifar_split(arrays: tuple[np.ndarray, np.ndarray], n_classes: int, per_class, skip, size, val=False) -> Split:
    data, labels = arrays
    idx = _per_class(labels, n_classes, per_class, skip, val)
    images = [decode_resize(a, size) for a in data[idx]] if data.shape[1] != size else list(data[idx])
    return Split(_stack(images, size), torch.from_numpy(labels[idx]).long())


def decode_resize(array: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))


# ---------------------------------------------------------------- entry point

def _is_folder_source(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")) or (path / "train").is_dir()


def load_dataset(cfg: DataConfig, log: Callable[[str], None] = lambda _m: None) -> Dataset:
    """Load (from cache when possible) the train/test(/val) splits described by ``cfg``."""
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else None
    if data_dir is not None and not data_dir.exists():
        raise DataError(f"data_dir {data_dir} does not exist; give a folder or a .tar.gz of an ImageFolder tree, "
                        "or a folder holding torchvision's CIFAR archives")
    as_folder = cfg.dataset == "folder" or (data_dir is not None and _is_folder_source(data_dir))
    if cfg.dataset == "folder" and data_dir is None:
        raise DataError("dataset=folder needs data_dir: a folder or .tar.gz with train/ and test/ class folders")
    if cfg.dataset not in ("cifar10", "cifar100", "folder"):
        raise DataError(f"unknown dataset {cfg.dataset!r}; accepted: cifar10, cifar100, folder")

    selection = (cfg.train_per_class, cfg.test_per_class, cfg.val_per_class, cfg.input_size, CACHE_VERSION)
    source = None
    if as_folder:
        if not (data_dir.is_dir() or data_dir.name.endswith((".tar.gz", ".tgz", ".tar"))):
            raise DataError(f"{data_dir} is neither a folder nor a .tar.gz/.tgz/.tar archive of an ImageFolder tree")
        key_src = ("folder", fingerprint(data_dir))
        name = data_dir.name
        for suffix in (".tar.gz", ".tgz", ".tar"):
            name = name.removesuffix(suffix)
        description = f"{cfg.dataset if cfg.dataset != 'folder' else 'folder'} from {data_dir.name}"
    else:
        root = data_dir or cache_dir / "downloads"
        key_src = (cfg.dataset, str(root.resolve()))
        name, description = cfg.dataset, f"{cfg.dataset} (torchvision)"
    key = hashlib.sha1(repr((key_src, selection)).encode()).hexdigest()[:20]
    cache_file = cache_dir / f"{name}-{key}.pt"

    if cache_file.exists():
        try:
            blob = torch.load(cache_file, weights_only=True)
            log(f"data: cached tensors {cache_file.name}")
            return _from_blob(blob, name, description)
        except Exception:
            log(f"data: cache {cache_file.name} unreadable, decoding again")

    if not as_folder:
        source = read_cifar(cfg.dataset, cfg, root)
        classes = source["classes"]
        n = len(classes)
        val = cfg.val_per_class or 0
        train = _cifar_split(source["train"], n, cfg.train_per_class, val, cfg.input_size)
        test = _cifar_split(source["test"], n, cfg.test_per_class, 0, cfg.input_size)
        val_split = _cifar_split(source["train"], n, None, val, cfg.input_size, val=True) if val else None
        skipped: list[str] = []
    else:
        source = read_image_folder(data_dir)
        classes, listing, skipped = source["classes"], source["listing"], list(source["skipped"])
        val = cfg.val_per_class or 0
        log(f"data: decoding {data_dir.name} ({len(classes)} classes)")
        train = _decode_all(_select(listing["train"], classes, cfg.train_per_class, val), cfg.input_size, skipped)
        test = _decode_all(_select(listing[source["test_name"]], classes, cfg.test_per_class), cfg.input_size, skipped)
        val_split = _decode_all(_select(listing["train"], classes, None, val, val=True), cfg.input_size, skipped) \
            if val else None
        if skipped:
            log(f"data: skipped {len(skipped)} unreadable or too large image(s): {', '.join(skipped[:5])}"
                + (" …" if len(skipped) > 5 else ""))
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{name}: no readable images in {'train' if len(train) == 0 else 'test'} "
                        f"(skipped {len(skipped)} unreadable or too large)")
    mean, std = channel_stats(train.images)
    blob = {"classes": classes, "skipped": skipped, "mean": mean, "std": std,
            "train": (train.images, train.labels), "test": (test.images, test.labels),
            "val": (val_split.images, val_split.labels) if val_split is not None else None}
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(blob, cache_file)
    return _from_blob(blob, name, description)


def _from_blob(blob: dict, name: str, description: str) -> Dataset:
    return Dataset(name=name, description=description, classes=list(blob["classes"]), train=Split(*blob["train"]),
                   test=Split(*blob["test"]), val=Split(*blob["val"]) if blob.get("val") else None,
                   skipped=list(blob["skipped"]), mean=tuple(blob["mean"]), std=tuple(blob["std"]))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 image tensor, in chunks."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double().div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.pow(2).sum(dim=(0, 2, 3))
    n = max(images.numel() // 3, 1)
    mean = total / n
    std = (squares / n - mean.pow(2)).clamp_min(1e-6).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
