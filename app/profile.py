"""Model cost: parameters, size, FLOPs, latency at batch 1, throughput at batch 256."""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Bytes of parameters and buffers, in MB (10⁶ bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


@torch.no_grad()
def flops(model: nn.Module, input_size: int = 32) -> int:
    """FLOPs of one forward pass on one image (``torch.utils.flop_counter``: 2 per MAC)."""
    m = copy.deepcopy(model).cpu().eval()
    counter = FlopCounterMode(display=False)
    with counter:
        m(torch.zeros(1, 3, input_size, input_size))
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(model: nn.Module, device: torch.device, input_size: int = 32, runs: int = 50, warmup: int = 10,
               batch: int = 1) -> float:
    """Median wall time (ms) of ``runs`` forward passes at ``batch`` after ``warmup`` passes."""
    m = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, 3, input_size, input_size, device=device)
    for _ in range(warmup):
        m(x)
    _sync(device)
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        m(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def throughput(model: nn.Module, device: torch.device, input_size: int = 32, batch: int = 256, runs: int = 10) -> float:
    """Images per second at ``batch`` (median batch time)."""
    return batch / (latency_ms(model, device, input_size, runs=runs, warmup=3, batch=batch) / 1000.0)


def profile(model: nn.Module, device: torch.device, input_size: int = 32, latency_runs: int = 50) -> dict:
    """Everything the Compare view shows about a model's cost."""
    out = {"params": param_count(model), "size_mb": round(size_mb(model), 4), "flops": flops(model, input_size),
           "latency_ms_cpu_b1": round(latency_ms(model, torch.device("cpu"), input_size, latency_runs), 4)}
    if device.type == "cuda":
        out["latency_ms_gpu_b1"] = round(latency_ms(model, device, input_size, latency_runs), 4)
    out["throughput_b256"] = round(throughput(model, device, input_size), 1)
    out["throughput_device"] = device.type
    return out
