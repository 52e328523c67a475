"""torchrun data parallelism on the CPU (gloo): two processes train like one with the same global batch.

Tolerance: the per-step losses of the first epoch (5 steps of 24 images) agree within
1e-5 (measured: ≤ 5e-7) and the trained weights within 1e-4 (measured: ≤ 1.1e-6). The two
ranks see exactly the single-process batches and crop/flip draws (augmentation stays on)
and batch norm uses global-batch statistics, so only floating-point summation order
differs. Later steps drift as far as one process does when only its thread count changes
(e.g. ResNet-8 at lr 0.1: ~1e-3 after a few steps, either way).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from app.augment import BatchStream
from app.checkpoint import load_checkpoint, load_into
from app.cli import main as cli
from app.data import Split
from models import build_model

ROOT = Path(__file__).resolve().parents[1]


def step_losses(events: Path) -> list[float]:
    return [e["losses"]["total"] for e in map(json.loads, events.read_text().splitlines()) if e["kind"] == "step"]


def test_shards_of_a_global_batch_are_the_single_process_batch():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(40))
    args = (split, 8, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3)
    one = list(BatchStream(*args, seed=3).epoch())
    ranks = [list(BatchStream(*args, seed=3, shard=(r, 2)).epoch()) for r in range(2)]
    assert len(one) == len(ranks[0]) == 5
    for i, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), x)  # same images, same crops and flips
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), y)


def test_two_processes_match_one_with_the_same_global_batch(cifar_jpeg, cache_dir, tmp_path):
    common = ["train-teacher", "--arch", "cnn_8_16_32", "--epochs", "1", "--lr", "0.1", "--batch-size", "24",
              "--data-dir", str(cifar_jpeg), "--cache-dir", str(cache_dir), "--train-per-class", "12",
              "--test-per-class", "4", "--device", "cpu", "--quiet", "--set", "eval.latency_runs=2"]
    assert cli(common + ["--runs", str(tmp_path / "one"), "--out", str(tmp_path / "one.pt"),
                         "--events", str(tmp_path / "one.jsonl")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "app.cli"] + common + ["--runs", str(tmp_path / "two"), "--out", str(tmp_path / "two.pt"),
                                                        "--events", str(tmp_path / "two.jsonl")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"checkpoint"') == 1  # rank 0 alone reports, writes --out and the run folder
    assert len(list((tmp_path / "two").iterdir())) == 1

    one, two = step_losses(tmp_path / "one.jsonl"), step_losses(tmp_path / "two.jsonl")
    assert len(one) == len(two) == 5
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-5, (one, two)

    blob = load_checkpoint(tmp_path / "two.pt")
    model = build_model("cnn_8_16_32")
    load_into(model, blob, "two-process checkpoint")  # plain BatchNorm2d keys: loads into the zoo model
    ref = load_checkpoint(tmp_path / "one.pt")["state_dict"]
    assert max((ref[k].float() - v.float()).abs().max().item() for k, v in blob["state_dict"].items()) <= 1e-4
