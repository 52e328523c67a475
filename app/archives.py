"""Checking and unpacking a dataset archive that a visitor uploads.

An upload is a ``.zip`` or ``.tar.gz``/``.tgz``/``.tar`` of an ImageFolder tree:
``train/<class>/<image>`` and ``test/<class>/<image>`` (or ``val/``), at the top of the
archive or inside one folder. ``inspect_archive`` reads headers only, streaming, and refuses
anything over ``ArchiveLimits`` before any image is decoded. ``extract_dataset`` then copies
only the accepted images out in chunks, never writing more bytes than a header declared,
checks each image's pixel count from its header, drops files that are no readable picture, and
refuses a result with nothing to train on (a class without a readable training or test picture);
it removes everything it wrote if any check fails. A refusal is an ``ArchiveError`` whose message names the limit and what is
accepted.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

from PIL import Image

from .data import (IMAGE_EXTS, MAX_IMAGE_PIXELS, MAX_MEMBER_BYTES, MIN_CLASSES, TEST_DIRS, DataError, ImageTooLarge,
                   check_pixels, open_image)

MB = 1_000_000
CHUNK = 64 * 1024       # copy unit, and the largest single read tarfile may make (long-name/pax headers)
HEADER_ALLOWANCE = 2048  # tar bytes per entry beyond its data (header, padding, a long name), for the stream cap
_CONTROL = re.compile("[\x00-\x1f\x7f]")
ACCEPTED = ("a .zip or .tar.gz of an ImageFolder tree: train/<class>/<image> and test/<class>/<image> "
            "(or val/), at the top or inside one folder")


@dataclass(frozen=True)
class ArchiveLimits:
    """What one uploaded dataset may hold, sized for a 2-core, 16 GB Space.

    - ``max_archive_bytes`` 50 MB: the uploaded file as sent (compressed).
    - ``max_members`` 30,000 entries (files and folders), counted from the headers.
    - ``max_member_bytes`` 5 MB per file, uncompressed (a large photo is 2–4 MB as JPEG).
    - ``max_total_bytes`` 300 MB for all files, uncompressed: the most written to disk.
    - ``max_image_pixels`` 4,000,000 per image (2000×2000, ~12 MB as RGB), from its header.
    - ``max_total_pixels`` 400 million over all images: bounds decoding to well under a minute.
    - ``min_classes``–``max_classes`` 2–100 class folders, the same in train/ and test/.
    - ``max_images_per_class`` 2,000 per class in each split.
    """

    max_archive_bytes: int = 50 * MB
    max_members: int = 30_000
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_total_bytes: int = 300 * MB
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_total_pixels: int = 400_000_000
    min_classes: int = MIN_CLASSES
    max_classes: int = 100
    max_images_per_class: int = 2_000


class ArchiveError(DataError):
    """An upload refused; the message names the limit and what is accepted."""


@dataclass(frozen=True)
class ArchiveImage:
    """One accepted image entry."""

    position: int  # index of the entry in the archive
    name: str      # path inside the archive, as stored
    split: str     # "train" or "test" (a val/ folder is extracted as test/)
    cls: str
    filename: str
    size: int      # uncompressed bytes, as the header declares


@dataclass(frozen=True)
class ArchiveReport:
    """What ``inspect_archive`` found, from headers only."""

    kind: str                  # zip | tar.gz | tar
    members: int               # entries: files and folders
    total_bytes: int           # uncompressed size of all files, from the headers
    root: str                  # the folder holding train/ ("" when at the top)
    test_name: str             # "test" or "val", as named in the archive
    classes: tuple[str, ...]
    images: tuple[ArchiveImage, ...]
    ignored: int               # other files: not images, hidden, outside the layout, val/ beside test/

    def count(self, split: str) -> int:
        return sum(img.split == split for img in self.images)

    def summary(self) -> str:
        return (f"{len(self.classes)} classes, {self.count('train'):,} train and {self.count('test'):,} "
                f"{self.test_name} images" + (f"; {self.ignored:,} other files ignored" if self.ignored else ""))


def _refuse(label: str, problem: str, accepted: str) -> ArchiveError:
    return ArchiveError(f"{label}: {problem}. Accepted: {accepted}.")


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _mb(n: int) -> str:
    if n < MB:
        return f"{n:,} bytes"
    return f"{n / MB:,.0f} MB" if n % MB == 0 else f"{n / MB:,.1f} MB"


# ---------------------------------------------------------------- entries, as each format's headers describe them

@dataclass(frozen=True)
class _Entry:
    name: str
    size: int
    kind: str  # "file", "dir", or what makes it unacceptable ("symbolic link", "encrypted file", ...)


Walk = Iterator[tuple[_Entry, Callable[[], IO[bytes]]]]

_TAR_KINDS = ((tarfile.TarInfo.issparse, "sparse file"), (tarfile.TarInfo.isfile, "file"),
              (tarfile.TarInfo.isdir, "dir"), (tarfile.TarInfo.issym, "symbolic link"),
              (tarfile.TarInfo.islnk, "hard link"), (tarfile.TarInfo.ischr, "device"),
              (tarfile.TarInfo.isblk, "device"), (tarfile.TarInfo.isfifo, "fifo"))
_MODE_KINDS = {stat.S_IFLNK: "symbolic link", stat.S_IFCHR: "device", stat.S_IFBLK: "device",
               stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}
_KIND_RULES = {"encrypted file": "unencrypted zips only",
               "file compressed with an unsupported method": "zip entries stored or deflated (zip tools' default)"}


def _tar_kind(m: tarfile.TarInfo) -> str:
    return next((kind for test, kind in _TAR_KINDS if test(m)), "special entry")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or fmt == stat.S_IFDIR:
        return "dir"
    if fmt not in (0, stat.S_IFREG):
        return _MODE_KINDS.get(fmt, "special entry")
    if info.flag_bits & 0x1:
        return "encrypted file"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return "file compressed with an unsupported method"
    return "file"


class _CappedStream:
    """A tar byte stream as tarfile sees it: no single read over ``CHUNK`` bytes (so a forged
    long-name or pax header is never buffered whole) and nothing read past ``cap`` bytes."""

    def __init__(self, raw: IO[bytes], cap: int, label: str, limits: ArchiveLimits):
        self.raw, self.cap, self.label, self.limits = raw, cap, label, limits

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > CHUNK:
            raise _refuse(self.label, "it has a tar header block (long name or pax record) over "
                          f"{CHUNK:,} bytes", f"header blocks of at most {CHUNK:,} bytes")
        data = self.raw.read(n)
        self._check(self.raw.tell())
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute seeks")
        self._check(pos)
        return self.raw.seek(pos)

    def tell(self) -> int:
        return self.raw.tell()

    def _check(self, pos: int) -> None:
        if pos > self.cap:
            raise _refuse(self.label, f"its tar data runs past {_mb(self.cap)} uncompressed",
                          f"at most {_mb(self.limits.max_total_bytes)} of files in all")


def _walk_tar(path: Path, kind: str, limits: ArchiveLimits) -> Walk:
    cap = limits.max_total_bytes + limits.max_members * HEADER_ALLOWANCE
    with open(path, "rb") as fh, (gzip.GzipFile(fileobj=fh) if kind == "tar.gz" else nullcontext(fh)) as raw, \
            tarfile.open(fileobj=_CappedStream(raw, cap, path.name, limits), mode="r:", encoding="utf-8",
                         errors="surrogateescape") as tar:
        for m in tar:  # headers only: tarfile seeks past data nobody reads
            yield _Entry(m.name, m.size, _tar_kind(m)), (lambda m=m: tar.extractfile(m))


def _count_zip_entries(fh: IO[bytes], label: str, limits: ArchiveLimits) -> None:
    """Count central-directory entries one header at a time, before zipfile builds them all."""
    end = zipfile._EndRecData(fh)  # zipfile's own end-record parser (private, stable since Python 2)
    if not end:
        return  # not a zip after all: ZipFile says so
    size = end[zipfile._ECD_SIZE]
    start = end[zipfile._ECD_LOCATION] - size
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    fh.seek(max(start, 0))
    seen = count = 0
    while seen < size:
        head = fh.read(zipfile.sizeCentralDir)
        if len(head) < zipfile.sizeCentralDir or head[:4] != zipfile.stringCentralDir:
            return  # damaged: ZipFile says so
        count += 1
        if count > limits.max_members:
            raise _too_many(label, limits)
        skip = sum(struct.unpack_from("<3H", head, 28))  # name, extra and comment lengths
        fh.seek(skip, 1)
        seen += len(head) + skip


def _walk_zip(path: Path, limits: ArchiveLimits) -> Walk:
    with open(path, "rb") as fh:
        _count_zip_entries(fh, path.name, limits)
        with zipfile.ZipFile(fh) as zf:
            for info in zf.infolist():
                yield _Entry(info.filename, info.file_size, _zip_kind(info)), (lambda info=info: zf.open(info))


def _walk(path: Path, kind: str, limits: ArchiveLimits) -> Walk:
    return _walk_zip(path, limits) if kind == "zip" else _walk_tar(path, kind, limits)


@contextmanager
def _reading(label: str, problem: str):
    """Turn a format library's complaint into an ArchiveError that says what is accepted."""
    try:
        yield
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
        raise _refuse(label, f"{problem} ({type(exc).__name__}: {exc})", ACCEPTED) from None


def _kind_of(path: Path, limits: ArchiveLimits) -> str:
    """Size check, then the format from the first bytes (not the name)."""
    if not path.is_file():
        raise _refuse(path.name, "no such file", ACCEPTED)
    size = path.stat().st_size
    if size > limits.max_archive_bytes:
        raise _refuse(path.name, f"the file is {_mb(size)}", f"archives of at most {_mb(limits.max_archive_bytes)}")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    raise _refuse(path.name, "it is not a zip, tar.gz or tar archive", ACCEPTED)


# ---------------------------------------------------------------- checks on names and counts

def _too_many(label: str, limits: ArchiveLimits) -> ArchiveError:
    return _refuse(label, f"it holds more than {limits.max_members:,} entries",
                   f"at most {limits.max_members:,} files and folders")


def _safe_parts(name: str, label: str) -> tuple[str, ...]:
    """The path's components; ArchiveError for a name that could land outside the archive folder."""
    where = "paths relative to the archive's top folder"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(label, f"{_show(name)} is not a UTF-8 name", "UTF-8 file names") from None
    if _CONTROL.search(name):
        raise _refuse(label, f"{_show(name)} has control characters in its name", "printable file names")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or norm[1:2] == ":":
        raise _refuse(label, f"{_show(name)} is an absolute path", where)
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse(label, f"{_show(name)} points outside the archive folder ('..')", where)
    if any(len(p.encode()) > 255 for p in parts):
        raise _refuse(label, f"{_show(name)} has a name over 255 bytes", "file and folder names of at most 255 bytes")
    return parts


@dataclass(frozen=True)
class _Candidate:
    position: int
    name: str
    root: str
    split: str
    cls: str
    filename: str
    size: int


def _candidate(position: int, entry: _Entry, parts: tuple[str, ...]) -> _Candidate | None:
    """An image laid out as [root/]split/class/file, or None (ignored)."""
    if len(parts) not in (3, 4) or any(p.startswith(".") for p in parts):
        return None
    split, cls, filename = parts[-3:]
    if split not in ("train",) + TEST_DIRS or os.path.splitext(filename)[1].lower() not in IMAGE_EXTS:
        return None
    return _Candidate(position, entry.name, parts[0] if len(parts) == 4 else "", split, cls, filename, entry.size)


@dataclass
class _Tally:
    """Entries seen so far; refuses the first one over a limit."""

    label: str
    limits: ArchiveLimits
    members: int = 0
    total: int = 0
    ignored: int = 0
    names: set[str] = field(default_factory=set)
    found: list[_Candidate] = field(default_factory=list)

    def add(self, position: int, entry: _Entry) -> None:
        lim, label = self.limits, self.label
        self.members += 1
        if self.members > lim.max_members:
            raise _too_many(label, lim)
        if entry.kind not in ("file", "dir"):
            article = "an" if entry.kind[0] in "aeiou" else "a"
            raise _refuse(label, f"{_show(entry.name)} is {article} {entry.kind}",
                          _KIND_RULES.get(entry.kind, "regular files and folders only (no links or devices)"))
        parts = _safe_parts(entry.name, label)
        if entry.kind == "dir":
            return
        key = "/".join(parts)
        if not parts or key in self.names:
            raise _refuse(label, f"{_show(entry.name)} is {'a duplicate' if parts else 'an empty'} name",
                          "each file once, under a non-empty name")
        self.names.add(key)
        if entry.size > lim.max_member_bytes:
            raise _refuse(label, f"{_show(entry.name)} is {entry.size:,} bytes uncompressed",
                          f"files of at most {_mb(lim.max_member_bytes)} each")
        self.total += entry.size
        if self.total > lim.max_total_bytes:
            raise _refuse(label, f"its files add up to more than {_mb(lim.max_total_bytes)} uncompressed",
                          f"at most {_mb(lim.max_total_bytes)} in all")
        found = _candidate(position, entry, parts)
        if found is None:
            self.ignored += 1
        else:
            self.found.append(found)

    def report(self, kind: str) -> ArchiveReport:
        label, lim = self.label, self.limits
        roots = sorted({c.root for c in self.found})
        if not roots:
            raise _refuse(label, f"no images in train/<class>/ and test/<class>/ folders ({self.ignored:,} other "
                          f"file{'s' * (self.ignored != 1)})", f"{ACCEPTED}; images: {', '.join(sorted(IMAGE_EXTS))}")
        if len(roots) > 1:
            raise _refuse(label, f"it holds image folders under several top folders "
                          f"({', '.join(r + '/' if r else '(top)' for r in roots)})", "one ImageFolder tree")
        splits = {s for s in (c.split for c in self.found)}
        test_name = next((s for s in TEST_DIRS if s in splits), None)
        if "train" not in splits or test_name is None:
            missing = "train/" if "train" not in splits else "test/ (or val/)"
            raise _refuse(label, f"it has no {missing} folder of class folders (found: "
                          f"{', '.join(s + '/' for s in sorted(splits))})", ACCEPTED)
        used = [c for c in self.found if c.split in ("train", test_name)]
        classes = _check_classes(label, lim, used, test_name)
        images = tuple(ArchiveImage(c.position, c.name, "train" if c.split == "train" else "test", c.cls,
                                    c.filename, c.size) for c in used)
        return ArchiveReport(kind, self.members, self.total, roots[0], test_name, classes, images,
                             self.ignored + len(self.found) - len(used))


def _check_classes(label: str, lim: ArchiveLimits, used: list[_Candidate], test_name: str) -> tuple[str, ...]:
    """Same classes in both splits, min..max of them, at most max_images_per_class each."""
    per_split = {s: Counter(c.cls for c in used if c.split == s) for s in ("train", test_name)}
    train, test = set(per_split["train"]), set(per_split[test_name])
    if train != test:
        raise _refuse(label, f"train/ and {test_name}/ have different classes (only in train/: "
                      f"{', '.join(sorted(train - test)) or '-'}; only in {test_name}/: "
                      f"{', '.join(sorted(test - train)) or '-'})", "the same class folders in both")
    classes = tuple(sorted(train))
    rule = f"{lim.min_classes} to {lim.max_classes} classes"
    if len(classes) < lim.min_classes:
        why = "; with one class every prediction is right and nothing is learnt" if len(classes) == 1 else ""
        raise _refuse(label, f"it has {len(classes)} class{'es' * (len(classes) != 1)} ({', '.join(classes)}){why}",
                      rule)
    if len(classes) > lim.max_classes:
        raise _refuse(label, f"it has {len(classes)} classes", rule)
    for split, counts in per_split.items():
        cls, n = counts.most_common(1)[0]
        if n > lim.max_images_per_class:
            raise _refuse(label, f"{split}/{cls}/ holds {n:,} images",
                          f"at most {lim.max_images_per_class:,} images per class in each split")
    return classes


# ---------------------------------------------------------------- public entry points

def inspect_archive(path: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> ArchiveReport:
    """Check an uploaded archive from its headers (nothing decoded, no member read whole)."""
    path = Path(path)
    kind = _kind_of(path, limits)
    tally = _Tally(path.name, limits)
    with _reading(path.name, f"it could not be read as a {kind} archive"), \
            closing(_walk(path, kind, limits)) as entries:
        for position, (entry, _open) in enumerate(entries):
            tally.add(position, entry)
    return tally.report(kind)


def extract_dataset(path: str | Path, dest_dir: str | Path, limits: ArchiveLimits = ArchiveLimits(),
                    report: ArchiveReport | None = None) -> Path:
    """Inspect (unless ``report`` is this archive's), then write the accepted images to
    ``dest_dir/{train,test}/<class>/``; return ``dest_dir``. Refused when, once the files that are no
    readable picture are dropped, a class has no training or no test picture left.

    ``dest_dir`` must be missing or empty; on any failure it is left as it was."""
    path, dest = Path(path), Path(dest_dir)
    report = report or inspect_archive(path, limits)
    made = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if not made and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty")
    try:
        kept = _extract_images(path, report, dest.resolve(), limits)
        _check_kept(path.name, report, kept)
    except BaseException:
        _empty(dest, remove=made)
        raise
    return dest


def _extract_images(path: Path, report: ArchiveReport, dest: Path, limits: ArchiveLimits) -> Counter:
    """Write the accepted images; the readable pictures kept, counted per (split, class)."""
    label = path.name
    wanted = {img.position: img for img in report.images}
    last, pixels, ready, kept = max(wanted), 0, set(), Counter()
    with _reading(label, "it could not be unpacked"), closing(_walk(path, report.kind, limits)) as entries:
        for position, (entry, open_member) in enumerate(entries):
            img = wanted.get(position)
            if img is None:
                continue
            if (entry.name, entry.kind) != (img.name, "file"):
                raise _refuse(label, "the archive changed while it was unpacked", ACCEPTED)
            target = _target(dest, img, label, ready)
            with open_member() as src, open(target, "xb") as out:  # x: never overwrite or follow a link
                _copy(src, out, img, label, limits)
            counted = _pixels(target, img, label, limits)
            if counted == 0:  # not a picture Pillow can read: nothing trains on it, so it takes no space
                target.unlink()
            else:
                kept[img.split, img.cls] += 1
            pixels += counted
            if pixels > limits.max_total_pixels:
                raise _refuse(label, f"its images add up to more than {limits.max_total_pixels:,} pixels",
                              f"at most {limits.max_total_pixels:,} pixels over all images")
            if position == last:
                break
    return kept


def _check_kept(label: str, report: ArchiveReport, kept: Counter) -> None:
    """Something to train and test on: every class keeps a readable picture in each split."""
    for split, shown in (("train", "train"), ("test", report.test_name)):
        declared = report.count(split)
        readable = sum(n for (s, _), n in kept.items() if s == split)
        if readable == 0:
            raise _refuse(label, f"none of its {declared:,} {shown}/ files is a readable picture (all dropped at "
                          "extraction), so there is nothing to " + ("train" if split == "train" else "test") + " on",
                          f"{ACCEPTED}; images Pillow reads: {', '.join(sorted(IMAGE_EXTS))}")
        empty = [c for c in report.classes if kept[split, c] == 0]
        if empty:
            raise _refuse(label, f"{shown}/ has no readable picture for class{'es' * (len(empty) > 1)} "
                          f"{', '.join(empty[:10])}{' …' if len(empty) > 10 else ''} (its files were dropped at "
                          "extraction)", "at least one readable picture per class in train/ and in test/")


def _target(dest: Path, img: ArchiveImage, label: str, ready: set[Path]) -> Path:
    """dest/split/class/file, its folder made and verified (once per class) to resolve inside ``dest``;
    the file name is one checked component, so the file is inside too."""
    folder = dest / img.split / img.cls
    if folder not in ready:
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve().is_relative_to(dest):
            ready.add(folder)
    if folder not in ready or "/" in img.filename or img.filename in ("", ".", ".."):
        raise _refuse(label, f"{_show(img.name)} would be written outside the dataset folder", ACCEPTED)
    return folder / img.filename


def _copy(src: IO[bytes], out: IO[bytes], img: ArchiveImage, label: str, limits: ArchiveLimits) -> None:
    """Stream one member in chunks; refuse the first byte beyond what its header declared."""
    cap, written = min(img.size, limits.max_member_bytes), 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > cap:
            raise _refuse(label, f"{_show(img.name)} holds more than the {cap:,} bytes its header declares",
                          f"entries whose data matches their headers, at most {_mb(limits.max_member_bytes)} each")
        out.write(chunk)


def _pixels(target: Path, img: ArchiveImage, label: str, limits: ArchiveLimits) -> int:
    """Width × height from the image's header, nothing decoded; 0 for a file Pillow cannot
    identify (the caller drops it)."""
    try:
        with open_image(target) as im:
            return check_pixels(im, limits.max_image_pixels)
    except (ImageTooLarge, Image.DecompressionBombError) as exc:
        why = str(exc) if isinstance(exc, ImageTooLarge) else f"too large ({exc})"
        raise _refuse(label, f"{_show(img.name)} is {why}",
                      f"images of at most {limits.max_image_pixels:,} pixels each (e.g. 2000×2000)") from None
    except Exception:  # unreadable: dropped by the caller
        return 0


def _empty(dest: Path, remove: bool) -> None:
    """Remove what extraction wrote (``dest`` was empty or missing before)."""
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
