"""Models of a finished (or shipped) run, loaded for the Retrieval and Pruning views:
predictions for an uploaded picture, nearest database images, feature-map thumbnails."""
from __future__ import annotations

import math

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.augment import Normalizer
from app import checkpoint
from app.config import DataConfig
from app.data import Dataset, Split, load_dataset
from app.device import Runtime
from app.evaluate import predict
from app.features import FeatureTap

from .views import LABELS, PHASES


@dataclass
class LoadedModel:
    key: str            # teacher | aux | baseline | kd | indistill
    label: str
    model: torch.nn.Module
    meta: dict


def load_model(path: Path, key: str) -> LoadedModel:
    model, meta = checkpoint.load_model(path)
    return LoadedModel(key, LABELS.get(key, key), model, meta)


def load_if_there(path: Path, key: str) -> LoadedModel | None:
    """The model of a checkpoint, or None when the file is missing or goes while it is read
    (a run folder evicted, or a unit not yet written)."""
    try:
        return load_model(path, key) if path.is_file() else None
    except FileNotFoundError:
        return None


MAX_DATABASE = 5000  # training images searched per model (evenly spaced over the split when larger)


class ModelSet:
    """Models to compare on an uploaded picture, and their database (a training split, at most MAX_DATABASE)."""

    def __init__(self, models: list[LoadedModel], data_cfg: dict) -> None:
        self.models = models
        self.data_cfg = data_cfg
        self._db: dict[str, torch.Tensor] = {}
        self._data: Dataset | None = None
        self.lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: Path, data_cfg: dict) -> "ModelSet":
        """Teacher, auxiliary teacher and seed 0 of each student phase of a run folder: those whose
        checkpoint is there (none while the folder is not yet written, or once it is evicted)."""
        ckpts = run_dir / "checkpoints"
        paths = {key: ckpts / (f"{key}.pt" if key in ("teacher", "aux") else f"{key}-s0.pt") for key in PHASES}
        return cls([m for m in (load_if_there(p, k) for k, p in paths.items()) if m is not None], data_cfg)

    @classmethod
    def from_files(cls, files: dict[str, Path], data_cfg: dict) -> "ModelSet":
        models = []
        for key, path in files.items():
            m = load_model(path, key)
            origin = " (InDistill authors' auxiliary)" if (m.meta.get("provenance") or {}).get("origin") else ""
            m.label = f"Shipped teacher {m.meta.get('arch')}{origin}"
            models.append(m)
        return cls(models, data_cfg)

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_dataset(DataConfig(**self.data_cfg))
        return self._data

    @property
    def db_index(self) -> torch.Tensor:
        """Indices into the training split that form the database."""
        n = len(self.data.train)
        return torch.arange(n) if n <= MAX_DATABASE else torch.linspace(0, n - 1, MAX_DATABASE).round().long()

    def database(self, m: LoadedModel) -> torch.Tensor:
        """Embeddings of the database images, normalised with the statistics stored with ``m``."""
        with self.lock:
            if m.key not in self._db:
                idx = self.db_index
                data = dataclasses.replace(self.data, **stats_of(m.meta))
                split = Split(data.train.images[idx], data.train.labels[idx])
                _, self._db[m.key] = predict(m.model, split, data, Runtime(torch.device("cpu")))
            return self._db[m.key]

    def query(self, picture: Image.Image, k: int = 8, metric: str = "cosine") -> list[dict]:
        """For each model: class probabilities and the ``k`` nearest database images."""
        out = []
        for m in self.models:
            x = to_input(picture, m.meta)
            with torch.no_grad(), FeatureTap(m.model) as tap:
                o = tap(x, features=False)
            probs = torch.softmax(o.logits.float(), 1)[0]
            db = self.database(m)
            e = o.embedding.float().flatten(1)
            if metric == "cosine":
                d = 1 - torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(db, dim=1).t()
            else:
                d = torch.cdist(e, db)
            nearest = self.db_index[d[0].topk(min(k, len(db)), largest=False).indices].tolist()
            out.append({"model": m, "probs": probs, "nearest": nearest})
        return out

    def thumbnail(self, index: int, scale: int = 3) -> Image.Image:
        img = self.data.train.images[index].permute(1, 2, 0).numpy()
        return Image.fromarray(img).resize((32 * scale, 32 * scale), Image.NEAREST)


def stats_of(meta: dict) -> dict[str, tuple[float, ...]]:
    """The normalisation a saved model was trained with (mean 0.5, std 0.25 if it stores none)."""
    return {"mean": tuple(meta.get("mean") or (0.5,) * 3), "std": tuple(meta.get("std") or (0.25,) * 3)}


def to_input(picture: Image.Image, meta: dict) -> torch.Tensor:
    """A picture as the normalised ``[1, 3, S, S]`` batch the model was trained on."""
    size = meta.get("input_size", 32)
    x = torch.from_numpy(np.asarray(picture.resize((size, size), Image.BILINEAR)).copy()).permute(2, 0, 1)[None]
    stats = stats_of(meta)
    return Normalizer(stats["mean"], stats["std"], torch.device("cpu"))(x)


def feature_grid(fmap: torch.Tensor, channels: list[int] | None = None, cell: int | None = None,
                 gap: int = 2) -> Image.Image:
    """Every channel of ``fmap`` (or the listed ``channels``) as one grayscale mosaic: a near-square
    grid of single-channel maps, each min–max scaled and enlarged to ``cell`` pixels (default: at
    least 48, a whole multiple of the map's size so pixels stay square), ``gap`` white pixels apart."""
    fmap = fmap.float()
    idx = channels if channels is not None else list(range(fmap.shape[0]))
    cols = max(1, math.ceil(math.sqrt(len(idx))))
    rows = max(1, math.ceil(len(idx) / cols))
    h, w = fmap.shape[-2:]
    cell = cell or max(1, math.ceil(48 / max(h, w))) * max(h, w)
    canvas = Image.new("L", (cols * cell + (cols - 1) * gap, rows * cell + (rows - 1) * gap), 255)
    for n, c in enumerate(idx):
        m = fmap[c]
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        tile = Image.fromarray((m.numpy() * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
        canvas.paste(tile, ((n % cols) * (cell + gap), (n // cols) * (cell + gap)))
    return canvas


def stage_maps(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad(), FeatureTap(model) as tap:
        return [f[0] for f in tap(x).features]
