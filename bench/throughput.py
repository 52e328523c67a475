"""Training throughput: a reference-style loop vs the engine's pipeline, side by side, and
the engine against the student's own limit on this machine.

Both train the same student from the same initialisation for the same number of
images, in one process, alternating ``--repeats`` times (the median of each is reported,
since a shared 2-core machine is noisy):

- reference: a torchvision-style dataset of uint8 images → PIL RandomCrop(32, pad 4) /
  RandomHorizontalFlip / ToTensor / Normalize → DataLoader (shuffle, batch 128,
  workers = cores) → fp32 SGD step;
- engine: uint8 tensors on the device → batched crop/flip/normalise
  (``app.augment.BatchStream``) → ``app.train.run_segments`` (bf16 autocast and
  channels-last on CUDA; fp32 on the CPU), batch 128.

Share of the limit (``--parts limit``): the limit is a bare loop over pre-normalised,
channels-last batches already in memory (no augmentation, no hooks, no events) doing
only the necessary work per step — the student's forward + backward + SGD step for
CE, plus the frozen teacher's forward (inference mode, batch norm folded) and Hinton
KD for KD. The engine's CE and KD phases (``run_segments`` fed by ``BatchStream`` with
augmentation, the teacher folded as in ``Experiment``) are timed alternately with their
limits; each share is the median of the paired engine/limit ratios.

    python bench/throughput.py --device cpu --data-dir ../shared/data/cifar10-jpeg.tar.gz --json
    python bench/throughput.py --device cpu --parts limit --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.augment import BatchStream  # noqa: E402
from app.checkpoint import load_checkpoint, load_into  # noqa: E402
from app.config import ASSETS, DataConfig  # noqa: E402
from app.data import load_dataset  # noqa: E402
from app.device import resolve, seed_everything  # noqa: E402
from app.features import FeatureTap, Outputs  # noqa: E402
from app.fold import fold_batchnorm  # noqa: E402
from app.losses import build_loss  # noqa: E402
from app.pairing import spec_of  # noqa: E402
from app.train import LoopContext, Segment, ce_objective, kd_objective, run_segments, trainable  # noqa: E402
from models import build_model  # noqa: E402

TEACHER = ASSETS / "teachers" / "cnn_16_32_64.pt"


class ReferenceDataset(torch.utils.data.Dataset):
    """What a typical KD code base feeds its DataLoader: HWC uint8 arrays through PIL transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        import torchvision.transforms as T
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_loop(model, data, images: int, device, batch: int, workers: int) -> float:
    ds = ReferenceDataset(data.train.images, data.train.labels, data.mean, data.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    seen, start = 0, None
    while seen < images:
        batches = iter(loader)
        for x, y in batches:
            if start is None:  # start the clock once the workers delivered the first batch
                start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            if seen >= images:
                break
        del batches  # shut the workers down so they do not compete with the next measurement
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def _sync(rt) -> None:
    if rt.cuda:
        torch.cuda.synchronize()


def engine_loop(model, data, images: int, rt, batch: int, objective=None, params=None) -> float:
    """Images/s of the engine's loop (CE unless ``objective``/``params`` are given), after 3 warm-up steps."""
    stream = BatchStream(data.train, batch, rt.device, data.mean, data.std, seed=0, channels_last=rt.channels_last)
    steps = max(1, images // batch)
    objective = objective or ce_objective(model)
    params = params or trainable(model)
    ctx = LoopContext(rt, lambda e: None, threading.Event(), "bench", 0)
    run_segments(model, stream, [Segment("warm-up", 3, objective, params, "sgd", 0.05)], ctx)
    _sync(rt)
    seconds = run_segments(model, stream, [Segment("train", steps, objective, params, "sgd", 0.05)], ctx)
    _sync(rt)
    return steps * stream.batch_size / seconds


def engine_kd(model, teacher, loss, data, images: int, rt, batch: int) -> float:
    """The engine's KD phase: FeatureTaps on both nets, ``kd_objective`` as ``Experiment`` builds it."""
    with FeatureTap(model) as s_tap, FeatureTap(teacher) as t_tap:
        return engine_loop(model, data, images, rt, batch, kd_objective(s_tap, t_tap, loss), trainable(model, loss))


def memory_batches(data, rt, batch: int, count: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` pre-normalised (channels-last on the engine's runtime) training batches, in memory."""
    stream = BatchStream(data.train, batch, rt.device, data.mean, data.std, augment=False, seed=1,
                         channels_last=rt.channels_last)
    return [b for b, _ in zip(stream.epoch(), range(count))]


def limit_loop(model, batches, images: int, rt, teacher=None, loss=None) -> float:
    """Images/s of the bare necessary work per step on in-memory ``batches`` (see the module doc)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()

    def step(x, y):
        if teacher is None:
            total = F.cross_entropy(model(x), y)
        else:
            with torch.inference_mode():
                t = teacher(x)
            s = model(x)
            total = loss.ce_weight * F.cross_entropy(s, y) + sum(loss(Outputs(logits=s), Outputs(logits=t), y).values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    steps = max(1, images // len(batches[0][1]))
    for i in range(3):
        step(*batches[i % len(batches)])
    _sync(rt)
    start = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    _sync(rt)
    return steps * len(batches[0][1]) / (time.perf_counter() - start)


def load_teacher(path: Path, data, rt):
    blob = load_checkpoint(path)
    meta = blob["meta"]
    if meta.get("num_classes", data.num_classes) != data.num_classes:
        raise SystemExit(f"teacher {path} has {meta['num_classes']} classes, the data {data.num_classes}")
    teacher = rt.prepare(build_model(meta["arch"], data.num_classes, meta.get("width", 1.0)))
    load_into(teacher, blob, f"teacher {path}")
    return teacher.eval()


def share_of_limit(args, data, rt) -> dict:
    """Engine vs limit rates for a CE phase and a Hinton-KD phase, measured alternately."""
    teacher = load_teacher(Path(args.teacher), data, rt)
    folded = fold_batchnorm(teacher)
    size = data.train.images.shape[-1]
    loss = build_loss("kd", spec_of(args.arch, data.num_classes, 1.0, size),
                      spec_of(teacher.arch, data.num_classes, 1.0, size)).to(rt.device)
    batches = memory_batches(data, rt, args.batch)

    def student():
        seed_everything(0)
        return rt.prepare(build_model(args.arch, data.num_classes))

    runs: dict[str, list[float]] = {k: [] for k in ("ce_limit", "ce_engine", "kd_limit", "kd_engine", "kd_limit_unfolded")}
    for _ in range(args.repeats):
        runs["ce_limit"].append(limit_loop(student(), batches, args.images, rt))
        runs["ce_engine"].append(engine_loop(student(), data, args.images, rt, args.batch))
        runs["kd_limit"].append(limit_loop(student(), batches, args.images, rt, folded, loss))
        runs["kd_engine"].append(engine_kd(student(), folded, loss, data, args.images, rt, args.batch))
        runs["kd_limit_unfolded"].append(limit_loop(student(), batches, args.images, rt, teacher, loss))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"teacher": f"{teacher.arch} ({Path(args.teacher).name}, {folded.folded_pairs} BN folded)"}
    for phase in ("ce", "kd"):
        shares = [e / l for e, l in zip(runs[f"{phase}_engine"], runs[f"{phase}_limit"])]
        out[phase] = {"limit_img_s": round(med[f"{phase}_limit"], 1), "engine_img_s": round(med[f"{phase}_engine"], 1),
                      "share": round(statistics.median(shares), 3), "shares": [round(v, 3) for v in shares]}
    out["kd"]["limit_unfolded_teacher_img_s"] = round(med["kd_limit_unfolded"], 1)
    out["runs"] = {k: [round(v) for v in vs] for k, vs in runs.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data-dir", default=os.environ.get("INDISTILL_DATA_DIR"))
    p.add_argument("--cache-dir")
    p.add_argument("--arch", default="cnn_8_16_32")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="reference,limit",
                   help="comma-separated: reference (vs a DataLoader loop), limit (share of the student's limit)")
    p.add_argument("--teacher", default=str(TEACHER), help="teacher checkpoint for the KD phase (default: shipped CNN 16/32/64)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"reference", "limit"}:
        p.error(f"--parts accepts reference and limit, got {args.parts}")
    rt = resolve(args.device)
    data = load_dataset(DataConfig(data_dir=args.data_dir, cache_dir=args.cache_dir))
    out = {"arch": args.arch, "device": rt.describe(), "images": args.images, "batch": args.batch,
           "data": data.description}
    if "reference" in parts:
        workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
        refs, engs = [], []
        for _ in range(args.repeats):
            seed_everything(0)
            ref_model = build_model(args.arch, data.num_classes).to(rt.device)
            eng_model = rt.prepare(build_model(args.arch, data.num_classes))
            eng_model.load_state_dict(ref_model.state_dict())
            refs.append(reference_loop(ref_model, data, args.images, rt.device, args.batch, workers))
            engs.append(engine_loop(eng_model, data, args.images, rt, args.batch))
        ref, eng = statistics.median(refs), statistics.median(engs)
        out.update({"reference_workers": workers, "reference_img_s": round(ref, 1), "engine_img_s": round(eng, 1),
                    "ratio": round(eng / ref, 2), "reference_runs": [round(v) for v in refs],
                    "engine_runs": [round(v) for v in engs]})
    if "limit" in parts:
        out["share_of_limit"] = share_of_limit(args, data, rt)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
