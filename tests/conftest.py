"""Shared fixtures: tiny synthetic ImageFolder trees, and the shared CIFAR-10 JPEG copy.

The shared copy is found through $INDISTILL_DATA_DIR, else ../shared/data/cifar10-jpeg.tar.gz
beside the checkout (where CI puts it)."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))
# runs train in the server's thread (some tests hold or patch training in-process); tests/test_worker.py
# covers the worker process that a public server uses by default
os.environ.setdefault("INDISTILL_WORKER", "thread")


def shared_data_path() -> Path:
    return Path(os.environ.get("INDISTILL_DATA_DIR", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    path = shared_data_path()
    if not path.exists():
        pytest.fail(f"shared CIFAR-10 JPEG copy not found at {path}; set INDISTILL_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def make_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class: int = 6, size: int = 32,
                      splits=("train", "test"), seed: int = 0) -> Path:
    """Write a small ImageFolder tree of random PNGs whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "folder")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on $INDISTILL_TEST_DEVICE (bench/gpu_check.sh runs these on CUDA)")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(tmp_path_factory, **env):
    """The app served in public mode on a free loopback port, with its own runs folder and data cache and
    MCP on; ``env`` sets (or, with None, unsets) more variables for the server's life. Yields
    ``(url, demo, runs)`` and restores the environment afterwards."""
    from app.ui import handlers as ui
    from app.ui.main import launch
    env = {"INDISTILL_CACHE": str(tmp_path_factory.mktemp("cache")), "INDISTILL_MCP": "1",
           "GRADIO_SERVER_PORT": str(free_port()), **env}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    runs = tmp_path_factory.mktemp("runs")
    ui.configure(runs_root=runs, public=True)
    demo = launch(prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/", demo, runs
    finally:
        demo.close()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
