import os
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from app.augment import BatchStream, Normalizer, random_crop_flip
from app.config import DataConfig
from app.data import DataError, channel_stats, load_dataset
from conftest import make_image_folder


def cfg(path, cache, **kw):
    return DataConfig(dataset="folder", data_dir=str(path), cache_dir=str(cache), **kw)


def test_folder_loads_as_uint8_tensors(image_folder, tmp_path):
    d = load_dataset(cfg(image_folder, tmp_path / "c"))
    assert d.classes == ["cat", "dog", "frog"]
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape == (18, 3, 32, 32)
    assert d.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # the class colour survives decoding: class c is brightest in channel c
    assert d.train.images[d.train.labels == 1].float().mean(dim=(0, 2, 3)).argmax() == 1


def test_archive_and_per_class_subsets(image_folder, tmp_path):
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="mydata")
    d = load_dataset(cfg(archive, tmp_path / "c", train_per_class=2, test_per_class=1, val_per_class=1))
    assert len(d.train) == 6 and len(d.test) == 3 and len(d.val) == 3
    assert d.eval_split is d.val


def test_cache_is_used_and_invalidated_by_a_changed_folder(image_folder, tmp_path):
    messages = []
    load_dataset(cfg(image_folder, tmp_path / "c"), messages.append)
    load_dataset(cfg(image_folder, tmp_path / "c"), messages.append)
    assert any("cached" in m for m in messages[-1:])
    new = image_folder / "train" / "cat" / "zzz.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(new)
    messages.clear()
    d = load_dataset(cfg(image_folder, tmp_path / "c"), messages.append)
    assert not any("cached" in m for m in messages) and len(d.train) == 19


def test_unreadable_images_are_skipped_counted_and_named(image_folder, tmp_path):
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    d = load_dataset(cfg(image_folder, tmp_path / "c"))
    assert len(d.train) == 18 and d.skipped == ["dog/broken.jpg (UnidentifiedImageError)"]


def test_other_sizes_and_modes_are_converted(tmp_path):
    root = make_image_folder(tmp_path / "big", size=48)
    Image.fromarray(np.full((20, 30), 128, np.uint8), "L").save(root / "train" / "cat" / "gray.png")
    Image.fromarray(np.full((20, 20, 4), 200, np.uint8), "RGBA").save(root / "test" / "dog" / "rgba.png")
    d = load_dataset(cfg(root, tmp_path / "c"))
    assert d.train.images.shape[1:] == (3, 32, 32) and d.test.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: os.rename(r / "test", r / "elsewhere"), "train/ and test/"),
    (lambda r: os.rename(r / "test" / "frog", r / "test" / "toad"), "class folders differ"),
])
def test_bad_layouts_say_what_is_expected(image_folder, tmp_path, mutate, message):
    mutate(image_folder)
    with pytest.raises(DataError, match=message):
        load_dataset(cfg(image_folder, tmp_path / "c"))


def test_missing_path_and_offline_cifar(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(cfg(tmp_path / "nope", tmp_path / "c"))
    with pytest.raises(DataError, match="download is off"):
        load_dataset(DataConfig(dataset="cifar10", cache_dir=str(tmp_path / "c"), download=False))


def test_val_folder_is_used_as_test(tmp_path):
    root = make_image_folder(tmp_path / "v", splits=("train", "val"))
    assert len(load_dataset(cfg(root, tmp_path / "c")).test) == 18


def test_random_crop_flip_matches_a_per_image_crop():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = random_crop_flip(x, 2, g1)
    oy = torch.randint(0, 5, (6, 1), generator=g2)
    ox = torch.randint(0, 5, (6, 1), generator=g2)
    flip = torch.rand(6, 1, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        if flip[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop)
    assert out.dtype == torch.uint8


def test_batch_stream_normalises_and_covers_an_epoch(image_folder, tmp_path):
    d = load_dataset(cfg(image_folder, tmp_path / "c"))
    stream = BatchStream(d.train, 4, torch.device("cpu"), d.mean, d.std, augment=False, seed=0)
    labels = torch.cat([y for _, y in stream.epoch()])
    assert stream.steps_per_epoch == 4 and len(labels) == 16
    x, _ = next(stream.epoch())
    assert x.dtype == torch.float32
    full = Normalizer(d.mean, d.std, torch.device("cpu"))(d.train.images)
    assert full.mean(dim=(0, 2, 3)).abs().max() < 1e-3


def test_channel_stats():
    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    x[:, 0] = 255
    mean, std = channel_stats(x)
    assert mean == (1.0, 0.0, 0.0)


def test_shared_cifar_copy_subset(cifar_jpeg, cache_dir):
    d = load_dataset(DataConfig(data_dir=str(cifar_jpeg), cache_dir=str(cache_dir), train_per_class=5, test_per_class=3))
    assert d.classes[:3] == ["airplane", "automobile", "bird"] and len(d.classes) == 10
    assert len(d.train) == 50 and len(d.test) == 30
