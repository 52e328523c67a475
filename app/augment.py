"""Batches straight from uint8 tensors: crop-with-padding and flip on whole batches on the
device, then normalisation — no per-image PIL work and no DataLoader workers."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .data import Split


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     draws: tuple[int, int] | None = None) -> torch.Tensor:
    """Random ``pad``-padded crop and horizontal flip of a uint8 batch ``[B, C, H, W]``.

    The zero-padded batch is viewed (no copy) as every image's ``(2·pad+1)²`` possible
    crops; one indexing copy takes each image's drawn crop, then the drawn images are
    flipped. ``draws=(total, start)``: draw offsets and flips for a batch of ``total``
    images and use those from ``start`` on (a rank's slice of a global batch gets the
    draws one process would give it). Returns a contiguous ``[B, C, H, W]`` batch.
    """
    b, c, h, w = x.shape
    dev = x.device
    total, start = draws or (b, 0)
    oy = torch.randint(0, 2 * pad + 1, (total,), device=dev, generator=generator)[start:start + b]
    ox = torch.randint(0, 2 * pad + 1, (total,), device=dev, generator=generator)[start:start + b]
    flip = (torch.rand(total, device=dev, generator=generator) < 0.5)[start:start + b]
    padded = F.pad(x, (pad, pad, pad, pad))
    sb, sc, sh, sw = padded.stride()
    crops = padded.as_strided((b, 2 * pad + 1, 2 * pad + 1, c, h, w), (sb, sh, sw, sc, sh, sw))
    out = crops[torch.arange(b, device=dev), oy, ox]
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)


class Normalizer:
    """uint8 → float, scaled to [0, 1] and standardised per channel."""

    def __init__(self, mean, std, device: torch.device) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32, copy=True).mul_(self.scale).sub_(self.shift)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the ragged last batch is dropped); at least one."""
    return max(1, n_images // min(batch_size, n_images)) if n_images else 1


class BatchStream:
    """Shuffled, augmented training batches from a :class:`Split` held on ``device``.

    ``shard=(rank, world)``: every rank walks the same shuffled epoch (same seed) and
    yields its contiguous ``batch_size / world`` slice of each global batch, augmented
    with the draws one process would have made for those images (see ``app.distributed``).
    ``batch_size`` and ``steps_per_epoch`` stay global.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, mean, std, *,
                 augment: bool = True, pad: int = 4, seed: int = 0, channels_last: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = min(batch_size, len(self.labels))
        self.rank, self.world = shard
        if self.batch_size % self.world:
            raise ValueError(f"optim.batch_size={self.batch_size} must be divisible by the {self.world} processes "
                             "(each takes an equal slice of every batch)")
        self.device = device
        self.normalize = Normalizer(mean, std, device)
        self.augment, self.pad, self.channels_last = augment, pad, channels_last
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels), device=self.device, generator=self.generator)
        local = self.batch_size // self.world
        start = self.rank * local
        for i in range(self.steps_per_epoch):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world > 1:
                idx = idx[start:start + local]
            x = self.images[idx]
            if self.augment:
                x = random_crop_flip(x, self.pad, self.generator, (self.batch_size, start) if self.world > 1 else None)
            x = self.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


EVAL_BATCH = 256              # images per evaluation batch, at most (larger ones run slower per image on the CPU)
EVAL_BATCH_FLOPS = 20e9       # forward FLOPs per evaluation batch, at most: ~0.2–0.5 s on one CPU thread


def eval_batch_for(flops_per_image: float) -> int:
    """Images per evaluation batch for a network of ``flops_per_image``: at most
    :data:`EVAL_BATCH_FLOPS` a batch, so a cancel checked between batches lands within a
    fraction of a second even for the largest networks (and the size depends on the network
    only: the same model gets the same batches, the same figures)."""
    return max(1, min(EVAL_BATCH, int(EVAL_BATCH_FLOPS // max(flops_per_image, 1.0))))


def eval_batches(split: Split, device: torch.device, mean, std, batch_size: int = EVAL_BATCH,
                 channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Unaugmented batches in order (for accuracy, embeddings and retrieval)."""
    norm = Normalizer(mean, std, device)
    for i in range(math.ceil(len(split) / batch_size)):
        x = norm(split.images[i * batch_size:(i + 1) * batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, split.labels[i * batch_size:(i + 1) * batch_size].to(device, non_blocking=True)
