"""Model cost: parameters, size, FLOPs, latency at batch 1, throughput at batch 256."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

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
def latency_times(model: nn.Module, device: torch.device, input_size: int = 32, runs: int = 50, warmup: int = 10,
                  batch: int = 1, check: Callable[[], None] = lambda: None) -> list[float]:
    """Wall times (ms) of ``runs`` forward passes at ``batch`` after ``warmup`` passes (``check``
    before each: it raises to stop, e.g. on a cancel)."""
    m = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, 3, input_size, input_size, device=device)
    for _ in range(warmup):
        check()
        m(x)
    _sync(device)
    times = []
    for _ in range(max(runs, 1)):
        check()
        t0 = time.perf_counter()
        m(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def latency_ms(model: nn.Module, device: torch.device, input_size: int = 32, runs: int = 50, warmup: int = 10,
               batch: int = 1, check: Callable[[], None] = lambda: None) -> float:
    """Median wall time (ms) of ``runs`` forward passes at ``batch``."""
    return statistics.median(latency_times(model, device, input_size, runs, warmup, batch, check))


def spread(times: list[float]) -> dict:
    """Median and interquartile range (ms) of repeated timings, rounded."""
    if len(times) < 2:
        return {"median": round(times[0], 4), "q1": round(times[0], 4), "q3": round(times[0], 4), "runs": len(times)}
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median": round(med, 4), "q1": round(q1, 4), "q3": round(q3, 4), "runs": len(times)}


def throughput(model: nn.Module, device: torch.device, input_size: int = 32, batch: int = 256, runs: int = 10,
               check: Callable[[], None] = lambda: None) -> float:
    """Images per second at ``batch`` (median batch time)."""
    return batch / (latency_ms(model, device, input_size, runs=runs, warmup=3, batch=batch, check=check) / 1000.0)


def profile(model: nn.Module, device: torch.device, input_size: int = 32, latency_runs: int = 50,
            check: Callable[[], None] = lambda: None) -> dict:
    """Everything the Compare view shows about a model's cost; latencies with their spread
    (``latency_ms_cpu_b1_spread``: median, quartiles and runs). An experiment measures
    this once per architecture and width, so models of one architecture share one figure."""
    cpu = spread(latency_times(model, torch.device("cpu"), input_size, latency_runs, check=check))
    out = {"params": param_count(model), "size_mb": round(size_mb(model), 4), "flops": flops(model, input_size),
           "latency_ms_cpu_b1": cpu["median"], "latency_ms_cpu_b1_spread": cpu}
    if device.type == "cuda":
        gpu = spread(latency_times(model, device, input_size, latency_runs, check=check))
        out["latency_ms_gpu_b1"], out["latency_ms_gpu_b1_spread"] = gpu["median"], gpu
    out["throughput_b256"] = round(throughput(model, device, input_size, check=check), 1)
    out["throughput_device"] = device.type
    return out
