"""Calibrate and check the public time estimate (app/public.py) on this machine, one training thread.

``--measure``: per offered architecture, time training steps (forward + backward + optimizer) at
two batch sizes and evaluation forward passes at two batch sizes, fit a fixed cost per step/batch
plus a cost per image, and print the table (``--write`` stores it in assets/cost_table.json, the
data app.public reads). Times are this process's CPU seconds (one thread: a quiet machine's wall
time), the minimum of a few repeats: on a CPU shared with other work, wall times are inflated by
whatever else runs, CPU seconds much less.

Default (the check): for each offered architecture × batch size, a short run through the real
engine (Experiment, a few steps on the embedded sample) next to the estimate of the same config,
and their ratio (estimate / measured CPU seconds; the wall seconds beside them; the stated factor
is 2 either way). ``--json`` prints the rows as JSON.

    .venv/bin/python bench/calibrate.py --json                 # every architecture, batches 2 8 32 128 512
    .venv/bin/python bench/calibrate.py --arch resnet32x4 --batch 2 124
    .venv/bin/python bench/calibrate.py --arch cnn_8_16_32 --batch 2 --steps 300   # the engine's per-step cost
    .venv/bin/python bench/calibrate.py --measure --write
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("INDISTILL_TRAIN_THREADS", "1")   # as a public server trains: one thread, a core for the pages
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from app import public  # noqa: E402
from app.augment import eval_batch_for  # noqa: E402
from app.config import preset  # noqa: E402
from app.data import load_dataset  # noqa: E402
from app.experiment import Experiment  # noqa: E402
from app.profile import flops  # noqa: E402
from models import MODELS, build_model  # noqa: E402

BATCHES = (2, 8, 32, 128, 512)   # the plan allows 2 … Budget.max_batch
REPEATS = 3


# ---------------------------------------------------------------- the table

def _best(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def _fit(t_small: float, b_small: int, t_large: float, b_large: int) -> tuple[float, float]:
    """(fixed seconds, seconds per image) of the line through two batch timings."""
    per_image = max((t_large - t_small) / (b_large - b_small), t_large / b_large / 4)
    return max(t_small - b_small * per_image, 0.0), per_image


def measure(arch: str) -> dict:
    """One architecture's training-step and forward costs on one thread (width 1, 32 × 32, 10 classes)."""
    torch.set_num_threads(1)
    model = build_model(arch, 10).to(memory_format=torch.channels_last)
    f = flops(model, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    large = int(min(128, max(8, 3e9 // f)))

    def batch(b):
        return torch.randn(b, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (b,))

    def train_step(b):
        x, y = batch(b)

        def run():
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return _best(run)

    def forward(b):
        x, _ = batch(b)

        def run():
            model.eval()
            with torch.no_grad():
                model(x)
        return _best(run)
    step_s, image_s = _fit(train_step(1), 1, train_step(large), large)
    fwd_large = eval_batch_for(f) if eval_batch_for(f) > 1 else 2
    fwd_batch_s, fwd_image_s = _fit(forward(1), 1, forward(fwd_large), fwd_large)
    return {"flops": f, "train_step_s": round(step_s, 6), "train_image_s": round(image_s, 7),
            "fwd_batch_s": round(fwd_batch_s, 6), "fwd_image_s": round(fwd_image_s, 7)}


def measure_all(archs: list[str]) -> dict:
    rows = {}
    for arch in archs:
        rows[arch] = measure(arch)
        print(json.dumps({arch: rows[arch]}), file=sys.stderr, flush=True)
    return {"about": "seconds on one CPU thread, width 1, 32 × 32 inputs; fixed + per image; bench/calibrate.py "
                     "--measure (the minimum of a few repeats)",
            "measured": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "networks": rows}


# ---------------------------------------------------------------- the check through the engine

def tiny_config(arch: str, batch: int, cache: Path, steps: int = 2):
    """``arch`` as the student (baseline arm only) under the shipped CNN teacher, on the embedded sample:
    ``steps`` steps at ``batch`` (one epoch each), their per-epoch evaluations, the final evaluation and
    the architecture's cost profile."""
    per_class = max(1, -(-batch // 10))   # 10 classes: one batch of the asked size per epoch
    return preset("workshop").with_overrides({
        "student.arch": arch, "optim.batch_size": batch, "phases.kd": False, "phases.indistill": False,
        "data.train_per_class": per_class, "data.test_per_class": 5, "data.val_per_class": 0,
        "data.cache_dir": str(cache), "student.epochs": steps * (10 * per_class // batch),
        "eval.latency_runs": 5, "eval.info_batch": 32, "device": "cpu", "equal_epochs": False})


def check(arch: str, batch: int, cache: Path, runs_root: Path, steps: int = 2) -> dict:
    cfg = tiny_config(arch, batch, cache, steps)
    est = public.estimate_config(cfg)
    load_dataset(cfg.data)     # decoded once into the cache, outside the timing (as a server's warm cache)
    t, cpu = time.perf_counter(), time.process_time()
    results = Experiment(cfg, runs_root=runs_root).run()
    wall, measured = time.perf_counter() - t, time.process_time() - cpu
    if results.get("status") != "finished":
        raise RuntimeError(f"{arch} at batch {batch}: {results.get('status')} {results.get('error', '')}")
    return {"arch": arch, "batch": batch, "steps": steps, "train_images": est.train_images, "estimate_s": round(est.seconds, 2),
            "measured_s": round(measured, 2), "wall_s": round(wall, 2), "ratio": round(est.seconds / measured, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="*", default=list(MODELS), help="architectures (default: all the page offers)")
    p.add_argument("--batch", nargs="*", type=int, default=list(BATCHES))
    p.add_argument("--steps", type=int, default=2, help="training steps of each run (one epoch each)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--dry", action="store_true", help="print the estimates only (no runs)")
    p.add_argument("--measure", action="store_true", help="measure the per-architecture table instead")
    p.add_argument("--write", action="store_true", help="with --measure: write it to " + str(public.COST_TABLE))
    args = p.parse_args(argv)
    if args.measure:
        table = measure_all(args.arch)
        if args.write:
            public.COST_TABLE.write_text(json.dumps(table, indent=1) + "\n")
        print(json.dumps(table, indent=1))
        return 0
    rows = []
    if args.dry:
        with tempfile.TemporaryDirectory() as tmp:
            est = {f"{a}@{b}": round(public.estimate_config(tiny_config(a, b, Path(tmp), args.steps)).seconds, 1)
                   for a in args.arch for b in args.batch}
        print(json.dumps({"estimates_s": est, "total_s": round(sum(est.values()), 1)}, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            for batch in args.batch:
                row = check(arch, batch, Path(tmp) / "cache", Path(tmp) / "runs", args.steps)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)   # progress: a row at a time
                if not args.json:
                    print(f"{arch:14s} batch {batch:4d}: estimated {row['estimate_s']:8.1f} s, measured "
                          f"{row['measured_s']:8.1f} CPU s ({row['wall_s']:.1f} s wall), ratio {row['ratio']:.2f}",
                          flush=True)
    ratios = [r["ratio"] for r in rows]
    summary = {"rows": rows, "ratio_min": min(ratios), "ratio_max": max(ratios), "threads": 1,
               "within_2x": all(0.5 <= r <= 2 for r in ratios)}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"ratio estimate/measured: {min(ratios):.2f} … {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
