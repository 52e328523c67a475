"""Model cost: parameters, size, FLOPs, latency at batch 1, throughput at batch 256."""
from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path
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


_FLOPS: dict[tuple, float] = {}


@torch.no_grad()
def forward_flops(model: nn.Module, image_shape: tuple[int, ...]) -> float:
    """FLOPs of one image's forward pass through ``model`` in eval mode, on its own device
    (``torch.utils.flop_counter``: 2 per MAC), counted once per architecture, parameter count and shape."""
    key = (getattr(model, "arch", type(model).__name__), sum(p.numel() for p in model.parameters()), tuple(image_shape))
    if key not in _FLOPS:
        p = next(model.parameters(), None)
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(1, *image_shape, device=p.device if p is not None else "cpu"))
        if len(_FLOPS) >= 256:
            _FLOPS.clear()
        _FLOPS[key] = float(counter.get_total_flops())
    return _FLOPS[key]


def flops(model: nn.Module, input_size: int = 32) -> int:
    """FLOPs of one forward pass on one square RGB image (a CPU copy in eval mode: ``model`` is untouched)."""
    return int(forward_flops(copy.deepcopy(model).cpu().eval(), (3, input_size, input_size)))


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
    return quartiles(times)


def quartiles(values: list[float], digits: int = 4) -> dict:
    """Median and quartiles (inclusive method) of ``values``, rounded, and how many there were."""
    if len(values) < 2:
        v = round(values[0], digits)
        return {"median": v, "q1": v, "q3": v, "runs": len(values)}
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": round(med, digits), "q1": round(q1, digits), "q3": round(q3, digits), "runs": len(values)}


def _cpu_seconds(cpus: set[int]) -> float | None:
    """Busy CPU seconds so far on ``cpus`` from /proc/stat (user, nice, system, irq, softirq,
    steal), or None where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(f) for f in fields[:8]]
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / os.sysconf("SC_CLK_TCK")


class OtherWork:
    """CPU time that processes other than this one spent on this process's cores over an
    interval (``cores_used``, in cores), from /proc/stat; None where that cannot be read."""

    def __init__(self) -> None:
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))

    def __enter__(self) -> "OtherWork":
        self.t0, self.own0, self.busy0 = time.perf_counter(), time.process_time(), _cpu_seconds(self.cpus)
        return self

    def __exit__(self, *exc) -> None:
        wall, own, busy = time.perf_counter() - self.t0, time.process_time() - self.own0, _cpu_seconds(self.cpus)
        self.cores_used = None if busy is None or self.busy0 is None or wall <= 0 else \
            round(max(0.0, busy - self.busy0 - own) / wall, 2)


BUSY_SHARE = 0.25     # other work on a quarter of the cores, or timings whose IQR is a quarter of their median


def busy_verdict(cores_used: float | None, cores: int, relative_iqr: float) -> tuple[bool, str]:
    """Whether the machine was busy while timing, and why: other processes used at least
    ``BUSY_SHARE`` of the cores, or the reference model's times varied by that much (IQR / median)."""
    reasons = []
    if cores_used is not None and cores_used >= BUSY_SHARE * cores:
        reasons.append(f"other work used {cores_used:.1f} of {cores} cores")
    if relative_iqr >= BUSY_SHARE:
        reasons.append(f"the teacher's times varied by {relative_iqr * 100:.0f} % (IQR / median)")
    return bool(reasons), "; ".join(reasons)


@torch.no_grad()
def interleaved_latency(models: dict[str, nn.Module], device: torch.device, input_size: int = 32, rounds: int = 50,
                        warmup: int = 10, reference: str | None = None, check: Callable[[], None] = lambda: None,
                        clock: Callable[[], float] = time.perf_counter) -> dict:
    """Batch-1 latency of several models timed together: ``rounds`` rounds, each one forward
    pass of every model in turn (teacher, student, aux, teacher, …), after ``warmup`` such
    rounds, so load on the machine falls on all of them alike. Per model: median and quartiles
    of its times (ms) and of its per-round ratio to ``reference`` (default: the first model);
    ``busy`` (and ``busy_reason``) when other work shared the cores while timing."""
    names = list(models)
    reference = reference if reference in models else names[0]
    nets = {n: copy.deepcopy(m).to(device).eval() for n, m in models.items()}
    x = torch.randn(1, 3, input_size, input_size, device=device)
    times: dict[str, list[float]] = {n: [] for n in names}
    with OtherWork() as other:
        for r in range(warmup + max(rounds, 1)):
            for n in names:
                check()
                t0 = clock()
                nets[n](x)
                _sync(device)
                if r >= warmup:
                    times[n].append((clock() - t0) * 1000.0)
    ref = quartiles(times[reference])
    rel_iqr = (ref["q3"] - ref["q1"]) / ref["median"] if ref["median"] > 0 else 0.0
    busy, why = busy_verdict(other.cores_used, len(other.cpus), rel_iqr)
    per_model = {n: quartiles(times[n]) | {"ratio": quartiles([t / r for t, r in zip(times[n], times[reference])], 3)}
                 for n in names}
    return {"device": device.type, "order": names, "reference": reference, "rounds": max(rounds, 1),
            "other_cores": other.cores_used, "cores": len(other.cpus), "busy": busy, "busy_reason": why,
            "models": per_model}


def ratio_text(ratio: dict | None) -> str:
    """A latency ratio to the teacher as 'median [q1, q3]' ('' when the run was not timed together)."""
    return f"{ratio['median']:.2f} [{ratio['q1']:.2f}, {ratio['q3']:.2f}]" if ratio else ""


def timing_note(record: dict | None, bold: str = "**") -> str:
    """How a run's latencies were timed (its ``results["latency"]``, None for a run recorded before
    they were timed together) and whether the machine was busy meanwhile, in words."""
    if not record:
        return "latency was timed once per architecture, alone, when its first model finished (median [IQR])"
    cpu = record.get("cpu") or {}
    busy = (f"; {bold}the machine was busy while timing{bold} ({cpu.get('busy_reason')}): the milliseconds are "
            "inflated, the ratios less so (each round times every model under the same load)") if cpu.get("busy") \
        else "; the machine was quiet while timing"
    return (f"latency: every architecture timed together at the end of the run, alternating over {record['rounds']} "
            "rounds (median [IQR]); × teacher is the per-round ratio to the teacher's time" + busy)


def throughput(model: nn.Module, device: torch.device, input_size: int = 32, batch: int = 256, runs: int = 10,
               check: Callable[[], None] = lambda: None) -> float:
    """Images per second at ``batch`` (median batch time)."""
    return batch / (latency_ms(model, device, input_size, runs=runs, warmup=3, batch=batch, check=check) / 1000.0)


def profile(model: nn.Module, device: torch.device, input_size: int = 32, latency_runs: int = 50,
            check: Callable[[], None] = lambda: None) -> dict:
    """Everything the Compare view shows about a model's cost; latencies with their spread
    (``latency_ms_cpu_b1_spread``: median, quartiles and runs), this model timed alone. An
    experiment measures this once per architecture and width, so models of one architecture
    share one figure, and at the end times its architectures together (:func:`time_together`)."""
    cpu = spread(latency_times(model, torch.device("cpu"), input_size, latency_runs, check=check))
    out = {"params": param_count(model), "size_mb": round(size_mb(model), 4), "flops": flops(model, input_size),
           "latency_ms_cpu_b1": cpu["median"], "latency_ms_cpu_b1_spread": cpu}
    if device.type == "cuda":
        gpu = spread(latency_times(model, device, input_size, latency_runs, check=check))
        out["latency_ms_gpu_b1"], out["latency_ms_gpu_b1_spread"] = gpu["median"], gpu
    return out | throughput_record(model, device, input_size, check)


def throughput_record(model: nn.Module, device: torch.device, input_size: int = 32,
                      check: Callable[[], None] = lambda: None) -> dict:
    return {"throughput_b256": round(throughput(model, device, input_size, check=check), 1),
            "throughput_device": device.type}


def time_together(models: dict[str, nn.Module], costs: dict, device: torch.device | None = None, input_size: int = 32,
                  rounds: int = 50, reference: str | None = None,
                  check: Callable[[], None] = lambda: None) -> tuple[dict, dict]:
    """A run's cost figures with every architecture's latency timed together
    (:func:`interleaved_latency` on the CPU, and on ``device`` too when it is a GPU).

    ``models``: cost key (``arch@width``) → a network of it, the reference (the teacher) among
    them; ``costs``: the figures recorded so far (a key missing, e.g. a sweep task's, gets its
    params, size, FLOPs and throughput here). Returns the new costs (per key
    ``latency_ms_cpu_b1`` with its ``_spread`` from the rounds, and ``latency_ratio_cpu_b1``: the
    per-round ratio to the reference, median and quartiles) and the run's ``latency`` record (how
    it was timed, and per device whether the machine was busy)."""
    device = device or torch.device("cpu")
    out = {k: dict(v) for k, v in costs.items()}
    for key, model in models.items():
        if key not in out:
            out[key] = {"params": param_count(model), "size_mb": round(size_mb(model), 4),
                        "flops": flops(model, input_size)} | throughput_record(model, device, input_size, check)
    record = {"timed": "together", "order": list(models), "rounds": max(rounds, 1)}
    for tag, dev in [("cpu", torch.device("cpu"))] + ([("gpu", device)] if device.type == "cuda" else []):
        t = interleaved_latency(models, dev, input_size, rounds, reference=reference, check=check)
        for key, m in t["models"].items():
            out[key].update({f"latency_ms_{tag}_b1": m["median"], f"latency_ms_{tag}_b1_spread": {
                k: m[k] for k in ("median", "q1", "q3", "runs")}, f"latency_ratio_{tag}_b1": m["ratio"]})
        record["reference"] = t["reference"]
        record[tag] = {k: t[k] for k in ("busy", "busy_reason", "other_cores", "cores")}
    record["busy"] = any(record[tag]["busy"] for tag in ("cpu", "gpu") if tag in record)
    return out, record
