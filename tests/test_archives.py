"""Uploaded dataset archives: every limit refuses with a message naming it, and what passes loads."""
import gzip
import io
import stat
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.archives import ArchiveError, ArchiveLimits, _copy, extract_dataset, inspect_archive
from app.config import DataConfig
from app.data import DataError, _list_archive, load_dataset
from conftest import make_image_folder

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
KINDS = ("zip", "tar.gz")


def png(colour=(200, 30, 30), size=4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h pixels, with no pixel data (a few dozen bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def tree(classes=("cat", "dog"), per_class=2, splits=("train", "test"), root="data", data=None):
    """(name, bytes) for an ImageFolder tree; each class a colour."""
    return [(f"{root + '/' if root else ''}{s}/{c}/{i}.png", data if data is not None else png((60 * k, 200, 0)))
            for s in splits for k, c in enumerate(classes) for i in range(per_class)]


def write(path: Path, files) -> Path:
    """A zip or tar(.gz) of (name, bytes) pairs; a TarInfo or ZipInfo may stand in for a name."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files:
                z.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w", format=tarfile.GNU_FORMAT) as t:
            for name, data in files:
                info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
                if info.isfile():
                    info.size = len(data)
                t.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def archive(tmp_path, kind, files, name="upload"):
    return write(tmp_path / f"{name}.{kind}", files)


def patch_zip_header(path: Path, entry: str, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of an entry's central-directory header (what zipfile's infolist reads)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46:at + 46 + len(entry)] != entry.encode():
        at = raw.index(b"PK\x01\x02", at + 4)
    struct.pack_into(fmt, raw, at + offset, value)
    path.write_bytes(bytes(raw))


def refused(path, match, limits=ArchiveLimits(), extract_to=None):
    with pytest.raises(ArchiveError, match=match) as err:
        if extract_to is None:
            inspect_archive(path, limits)
        else:
            extract_dataset(path, extract_to, limits)
    assert "Accepted:" in str(err.value)
    return str(err.value)


def cfg(path, cache):
    return DataConfig(dataset="folder", data_dir=str(path), cache_dir=str(cache))


# ---------------------------------------------------------------- accepted uploads

@pytest.mark.parametrize("kind, root", [("zip", ""), ("tar.gz", "mydata"), ("zip", "mydata"), ("tar", "")])
def test_valid_archive_extracts_to_a_loadable_tree(tmp_path, kind, root):
    extras = [(f"{root}/README.txt".lstrip("/"), b"hello"), ("__MACOSX/._x.png", b"junk"),
              (f"{root}/train/cat/.hidden.png".lstrip("/"), b"junk")]
    path = archive(tmp_path, kind, tree(("cat", "dog", "frog"), per_class=3, root=root) + extras)
    report = inspect_archive(path)
    assert report.classes == ("cat", "dog", "frog") and report.root == root and report.ignored == 3
    assert report.count("train") == 9 and "3 classes, 9 train and 9 test images" in report.summary()
    out = extract_dataset(path, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    d = load_dataset(cfg(out, tmp_path / "cache"))
    assert d.num_classes == 3 and len(d.train) == 9 and len(d.test) == 9


def test_val_folder_becomes_test(tmp_path):
    path = archive(tmp_path, "zip", tree(splits=("train", "val")))
    assert inspect_archive(path).test_name == "val"
    assert (extract_dataset(path, tmp_path / "out") / "test" / "dog" / "1.png").is_file()


# ---------------------------------------------------------------- refused from the headers

@pytest.mark.parametrize("kind", KINDS)
def test_too_many_members(tmp_path, kind):
    path = archive(tmp_path, kind, tree(per_class=3))  # 12 files
    refused(path, "more than 5 entries.*at most 5 files and folders", ArchiveLimits(max_members=5))


def test_zip_entries_are_counted_before_zipfile_builds_them(tmp_path, monkeypatch):
    path = archive(tmp_path, "zip", tree(per_class=3))  # 12 entries
    monkeypatch.setattr(zipfile, "ZipFile", None)  # refused before zipfile would read the directory
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", raw, end + 8, 1, 1)  # "1 entry" on this disk and in all
    path.write_bytes(bytes(raw))
    refused(path, "more than 5 entries", ArchiveLimits(max_members=5))


def test_tar_stream_cap_counts_header_blocks(tmp_path):
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("data/train/cat/0.png")
        info.pax_headers = {"comment": "x" * 20_000}  # under the header-block cap, over this stream cap
        t.addfile(info, io.BytesIO(b""))
    refused(path, "tar data runs past 12,240 bytes uncompressed.*at most 2,000 bytes of files",
            ArchiveLimits(max_members=5, max_total_bytes=2000))  # 2,000 + 5 × 2,048 header bytes


def test_archive_file_too_large(tmp_path):
    path = archive(tmp_path, "zip", tree())
    refused(path, r"the file is .* at most 100 bytes", ArchiveLimits(max_archive_bytes=100))


def test_tar_member_whose_header_claims_1_gib(tmp_path):
    info = tarfile.TarInfo("data/train/cat/huge.png")
    info.size = 1 << 30
    path = tmp_path / "bomb.tar.gz"  # the header alone, then end-of-archive blocks: 1 GiB is never stored
    path.write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + bytes(1024)))
    refused(path, r"'data/train/cat/huge.png' is 1,073,741,824 bytes uncompressed.*at most 5 MB each")


def test_zip_member_whose_header_claims_1_gib(tmp_path):
    path = archive(tmp_path, "zip", tree())
    patch_zip_header(path, "data/train/cat/0.png", 24, "<I", 1 << 30)
    refused(path, r"'data/train/cat/0.png' is 1,073,741,824 bytes uncompressed.*at most 5 MB each")


@pytest.mark.parametrize("kind", KINDS)
def test_total_uncompressed_size(tmp_path, kind):
    path = archive(tmp_path, kind, tree(data=bytes(400)))  # 8 × 400 bytes
    refused(path, "more than 2,000 bytes uncompressed.*at most 2,000 bytes in all",
            ArchiveLimits(max_total_bytes=2000))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, match", [
    ("../evil.png", r"outside the archive folder \('\.\.'\)"),
    ("data/train/../../evil.png", r"outside the archive folder \('\.\.'\)"),
    ("..\\evil.png", r"outside the archive folder \('\.\.'\)"),
    ("/etc/x", "is an absolute path"),
    ("C:/x.png", "is an absolute path"),
    ("data/train/cat/a\nb.png", "control characters"),
])
def test_names_outside_the_archive_folder(tmp_path, kind, name, match):
    msg = refused(archive(tmp_path, kind, tree() + [(name, b"x")]), match)
    assert "relative to the archive's top folder" in msg or "printable" in msg


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_names(tmp_path, kind):
    with pytest.warns(UserWarning) if kind == "zip" else nullcontext():  # zipfile warns on duplicates
        path = archive(tmp_path, kind, tree() + [("data/train/cat/0.png", png())])
    refused(path, "'data/train/cat/0.png' is a duplicate name")


@pytest.mark.parametrize("ftype, kind", [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
                                         (tarfile.CHRTYPE, "device"), (tarfile.FIFOTYPE, "fifo")])
def test_tar_links_and_devices(tmp_path, ftype, kind):
    info = tarfile.TarInfo("data/train/cat/link.png")
    info.type, info.linkname = ftype, "/etc/passwd"
    msg = refused(archive(tmp_path, "tar.gz", tree() + [(info, b"")]), f"link.png' is a {kind}")
    assert "regular files and folders only" in msg


def test_zip_symlink(tmp_path):
    info = zipfile.ZipInfo("data/train/cat/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(archive(tmp_path, "zip", tree() + [(info, b"/etc/passwd")]),
            "link.png' is a symbolic link.*regular files and folders only")


def test_zip_encrypted_entry(tmp_path):
    path = archive(tmp_path, "zip", tree())
    patch_zip_header(path, "data/train/dog/1.png", 8, "<H", 0x1)
    refused(path, "'data/train/dog/1.png' is an encrypted file.*unencrypted zips only")


def test_tar_oversized_pax_header(tmp_path):
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("data/train/cat/0.png")
        info.pax_headers = {"comment": "x" * 200_000}
        t.addfile(info, io.BytesIO(b""))
    refused(path, r"header block .* over 65,536 bytes")


def test_one_class(tmp_path):
    refused(archive(tmp_path, "zip", tree(("cat",))), r"it has 1 class \(cat\).*Accepted: 2 to 100 classes")


def test_101_classes(tmp_path):
    classes = [f"c{i:03d}" for i in range(101)]
    refused(archive(tmp_path, "tar.gz", tree(classes, per_class=1, data=b"")), "it has 101 classes.*2 to 100 classes")


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_images_per_class(tmp_path, kind):
    path = archive(tmp_path, kind, tree(per_class=4, data=b""))
    refused(path, "train/cat/ holds 4 images.*at most 3 images per class", ArchiveLimits(max_images_per_class=3))


def test_no_test_folder(tmp_path):
    refused(archive(tmp_path, "zip", tree(splits=("train",))), r"no test/ \(or val/\) folder")


def test_class_sets_differ(tmp_path):
    files = tree(("cat", "dog"), splits=("train",)) + tree(("cat", "frog"), splits=("test",))
    refused(archive(tmp_path, "zip", files), r"different classes \(only in train/: dog; only in test/: frog\)")


def test_several_top_folders(tmp_path):
    refused(archive(tmp_path, "zip", tree(root="a") + tree(root="b")), r"several top folders \(a/, b/\)")


def test_no_images(tmp_path):
    refused(archive(tmp_path, "zip", [("notes.txt", b"hi")]), r"no images in train/<class>/.*\(1 other file\).*\.png")


def test_not_an_archive(tmp_path):
    path = tmp_path / "data.zip"
    path.write_text("just some text")
    refused(path, "not a zip, tar.gz or tar archive")


def test_corrupt_tar_gz(tmp_path):
    path = archive(tmp_path, "tar.gz", tree())
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    refused(path, "could not be read as a tar.gz archive")


# ---------------------------------------------------------------- refused while extracting

@pytest.mark.parametrize("kind", KINDS)
def test_image_header_over_the_pixel_cap_is_refused_before_decoding(tmp_path, kind):
    path = archive(tmp_path, kind, tree() + [("data/train/cat/huge.png", png_header(12000, 12000))])
    inspect_archive(path)  # headers of the archive are fine; the image header is read at extraction
    refused(path, r"'data/train/cat/huge.png' is too large: 12000×12000 px > 4,000,000 px cap.*"
            r"at most 4,000,000 pixels each", extract_to=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # what was written is gone


def test_total_pixels(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    refused(archive(tmp_path, "zip", tree()), "more than 100 pixels.*at most 100 pixels over all images",
            ArchiveLimits(max_total_pixels=100), extract_to=out)  # 8 images of 16 px
    assert out.is_dir() and not any(out.iterdir())


def test_zip_whose_header_understates_the_data(tmp_path):
    path = archive(tmp_path, "zip", tree(data=bytes(1000)))
    patch_zip_header(path, "data/test/dog/1.png", 24, "<I", 10)  # declares 10 bytes, holds 1000
    refused(path, "could not be unpacked .*Bad CRC-32", extract_to=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_copy_stops_at_the_declared_size():
    from app.archives import ArchiveImage
    img = ArchiveImage(0, "train/cat/x.png", "train", "cat", "x.png", 100)
    out = io.BytesIO()
    with pytest.raises(ArchiveError, match="holds more than the 100 bytes its header declares"):
        _copy(io.BytesIO(bytes(200_000)), out, img, "up.zip", ArchiveLimits())
    assert len(out.getvalue()) == 0  # the first chunk already overshot: nothing written


# ---------------------------------------------------------------- nothing to train on, once unreadable files are dropped

@pytest.mark.parametrize("kind", KINDS)
def test_all_training_files_unreadable_is_refused_at_extraction(tmp_path, kind):
    """Headers pass (right layout, two classes), but every train/ file is no picture: dropped at
    extraction, which then refuses saying why, and leaves nothing behind."""
    files = tree(splits=("train",), data=b"\0" * 64) + tree(splits=("test",))
    path = archive(tmp_path, kind, files)
    assert inspect_archive(path).count("train") == 4
    message = refused(path, "none of its 4 train/ files is a readable picture .all dropped at extraction.",
                      extract_to=tmp_path / "out")
    assert "nothing to train on" in message and not (tmp_path / "out").exists()


def test_a_class_without_a_readable_test_picture_is_refused(tmp_path):
    files = tree(splits=("train",)) + tree(("cat",), splits=("test",)) + [("data/test/dog/0.png", b"not a png")]
    message = refused(archive(tmp_path, "zip", files), "test/ has no readable picture for class dog",
                      extract_to=tmp_path / "out")
    assert "at least one readable picture per class in train/ and in test/" in message


def test_unreadable_files_beside_readable_ones_are_only_dropped(tmp_path):
    files = tree() + [("data/train/cat/bad.png", b"junk"), ("data/test/dog/bad.png", b"junk")]
    out = extract_dataset(archive(tmp_path, "zip", files), tmp_path / "out")
    assert sorted(p.name for p in (out / "train" / "cat").iterdir()) == ["0.png", "1.png"]


# ---------------------------------------------------------------- app.data limits

def test_data_pixel_cap_skips_and_reports(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=2)
    (root / "train" / "cat" / "huge.png").write_bytes(png_header(12000, 12000))
    d = load_dataset(cfg(root, tmp_path / "c"))
    assert len(d.train) == 6
    assert d.skipped == ["cat/huge.png (too large: 12000×12000 px > 4,000,000 px cap)"]


def test_data_one_class_refused(tmp_path):
    root = make_image_folder(tmp_path / "f", classes=("cat",), per_class=2)
    with pytest.raises(DataError, match="needs at least 2 classes; found 1: cat"):
        load_dataset(cfg(root, tmp_path / "c"))


def test_data_archive_listing_skips_a_big_member_unread(tmp_path):
    files = tree() + [("data/train/cat/big.png", bytes(30_000_000))]
    path = write(tmp_path / "big.tar.gz", files)
    skipped = []
    tracemalloc.start()
    try:
        listing = _list_archive(path, skipped)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"peak {peak:,} bytes"
    assert skipped == ["cat/big.png (too large: 30,000,000 bytes > 5,000,000 byte cap)"]
    assert [n for n, _ in listing["train"].files["cat"]] == ["0.png", "1.png"]


def test_data_archive_listing_caps_what_it_holds(tmp_path):
    path = write(tmp_path / "t.tar.gz", tree(data=bytes(400)))  # 8 × 400 bytes
    with pytest.raises(DataError, match="more than 1,000 bytes, the most read from an archive into memory"):
        _list_archive(path, [], max_held_bytes=1000)
