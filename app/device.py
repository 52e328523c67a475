"""Device choice and precision: CUDA with bf16 autocast when present, else the CPU in fp32
with one thread per core; channels-last activations on both. Seeds make CPU runs
repeatable."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        # Faster on both: measured 1.2–1.3× for CNN-8/16/32, ResNet-20 and CNN-4 training on 2 CPU cores.
        return True

    def autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        if self.cuda:
            return f"cuda ({torch.cuda.get_device_name(self.device)}, bf16 autocast, channels-last)"
        return f"cpu ({torch.get_num_threads()} threads, fp32, channels-last)"


def resolve(device: str = "auto") -> Runtime:
    """``auto`` → CUDA if available, else CPU; ``cuda`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is available; use device=auto or cpu")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        torch.backends.cudnn.benchmark = True
        return Runtime(torch.device("cuda"))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    return Runtime(torch.device("cpu"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
