"""Training throughput on one device in fp32 and in bf16 autocast, alternating.

The same model, data and steps in both precisions, one after the other ``--repeats``
times; the median rate of each is reported (a shared machine is noisy).

    python bench/precision.py --device cpu --arch cnn_16_32_64 --threads 1 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.augment import BatchStream  # noqa: E402
from app.config import SAMPLE_DATA, DataConfig  # noqa: E402
from app.data import load_dataset  # noqa: E402
from app.device import resolve, seed_everything  # noqa: E402
from app.train import LoopContext, Segment, ce_objective, run_segments, trainable  # noqa: E402
from models import build_model  # noqa: E402


def rate(arch: str, data, rt, steps: int, batch: int) -> float:
    """Images per second of ``steps`` CE training steps after 3 warm-up steps."""
    seed_everything(0)
    model = rt.prepare(build_model(arch, data.num_classes))
    stream = BatchStream(data.train, batch, rt.device, data.mean, data.std, seed=0, channels_last=rt.channels_last)
    ctx = LoopContext(rt, lambda e: None, threading.Event(), "bench", 0)
    run_segments(model, stream, [Segment("warm-up", 3, ce_objective(model), trainable(model))], ctx)
    if rt.cuda:
        torch.cuda.synchronize()
    seconds = run_segments(model, stream, [Segment("CE", steps, ce_objective(model), trainable(model))], ctx)
    if rt.cuda:
        torch.cuda.synchronize()
    return steps * stream.batch_size / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data-dir", default=str(SAMPLE_DATA), help="default: the embedded CIFAR-10 sample")
    p.add_argument("--cache-dir")
    p.add_argument("--arch", default="cnn_8_16_32")
    p.add_argument("--steps", type=int, default=47, help="timed steps per run (47 × 128 ≈ 6,000 images)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    data = load_dataset(DataConfig(dataset="folder", data_dir=args.data_dir, cache_dir=args.cache_dir))
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision in runs:
            rt = resolve(args.device, precision)
            if args.threads:
                torch.set_num_threads(args.threads)
            runs[precision].append(rate(args.arch, data, rt, args.steps, args.batch))
    fp32, bf16 = (statistics.median(runs[k]) for k in ("fp32", "bf16"))
    where = torch.cuda.get_device_name(rt.device) if rt.cuda else f"{torch.get_num_threads()} threads"
    out = {"arch": args.arch, "device": f"{rt.device.type} ({where}, channels-last)", "batch": args.batch, "steps": args.steps,
           "fp32_img_s": round(fp32), "bf16_img_s": round(bf16), "ratio": round(bf16 / fp32, 2),
           "runs": {k: [round(v) for v in vs] for k, vs in runs.items()}, "data": data.description}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
