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
augmentation, the teacher folded as in ``Experiment``) take turns with their limits in
short rounds (``--chunks`` × ``--chunk-steps``); each share is the median of the
same-round engine/limit ratios, which holds up on a machine shared with other work.

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
from app.checkpoint import load_model  # noqa: E402
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


def engine_loop(model, data, images: int, rt, batch: int) -> float:
    """Images/s of the engine's CE loop, after 3 warm-up steps."""
    loop = EngineLoop(model, data, rt, batch)
    loop(3)
    steps = max(1, images // batch)
    return steps * loop.stream.batch_size / loop(steps)


class LimitLoop:
    """The bare necessary work per step on pre-normalised in-memory ``batches`` (see the module doc)."""

    def __init__(self, model, batches, rt, teacher=None, loss=None) -> None:
        self.model, self.batches, self.rt, self.teacher, self.loss = model.train(), batches, rt, teacher, loss
        self.opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        self.i = 0

    def step(self, x, y) -> None:
        if self.teacher is None:
            total = F.cross_entropy(self.model(x), y)
        else:
            with torch.inference_mode():
                t = self.teacher(x)
            s = self.model(x)
            total = self.loss.ce_weight * F.cross_entropy(s, y) + sum(
                self.loss(Outputs(logits=s), Outputs(logits=t), y).values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()

    def __call__(self, steps: int) -> float:
        """Seconds for ``steps`` steps."""
        _sync(self.rt)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(*self.batches[self.i % len(self.batches)])
            self.i += 1
        _sync(self.rt)
        return time.perf_counter() - start


class EngineLoop:
    """The engine: ``run_segments`` over an augmenting ``BatchStream``, one segment per call."""

    def __init__(self, model, data, rt, batch: int, objective=None, params=None) -> None:
        self.model, self.rt = model, rt
        self.stream = BatchStream(data.train, batch, rt.device, data.mean, data.std, seed=0,
                                  channels_last=rt.channels_last)
        self.objective = objective or ce_objective(model)
        self.params = params or trainable(model)
        self.ctx = LoopContext(rt, lambda e: None, threading.Event(), "bench", 0)

    def __call__(self, steps: int) -> float:
        """Seconds for ``steps`` steps (a fresh segment: optimizer, schedule, shuffled epoch)."""
        _sync(self.rt)
        start = time.perf_counter()
        run_segments(self.model, self.stream, [Segment("train", steps, self.objective, self.params, "sgd", 0.05)],
                     self.ctx)
        _sync(self.rt)
        return time.perf_counter() - start


def memory_batches(data, rt, batch: int, count: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` pre-normalised (channels-last on the engine's runtime) training batches, in memory."""
    stream = BatchStream(data.train, batch, rt.device, data.mean, data.std, augment=False, seed=1,
                         channels_last=rt.channels_last)
    return [b for b, _ in zip(stream.epoch(), range(count))]


def load_teacher(path: Path, data, rt):
    teacher, meta = load_model(path)
    if meta.get("num_classes", data.num_classes) != data.num_classes:
        raise SystemExit(f"teacher {path} has {meta['num_classes']} classes, the data {data.num_classes}")
    return rt.prepare(teacher).eval()


def interleaved(loops: dict, chunks: int, steps: int, batch: int) -> dict[str, list[float]]:
    """Images/s of each loop over ``chunks`` rounds of ``steps`` steps, the loops taking turns
    (order reversed every other round) so that they share the machine's load alike."""
    for loop in loops.values():
        loop(3)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for c in range(chunks):
        for name in names if c % 2 == 0 else names[::-1]:
            rates[name].append(steps * batch / loops[name](steps))
    return rates


def share_of_limit(args, data, rt) -> dict:
    """The engine's CE and KD phases against their limits, measured in interleaved chunks.

    ``share``: median over rounds of engine/limit in the same round (robust to other load
    on a shared machine); ``best_share``: the best engine round over the best limit round;
    ``*_img_s``: each loop's best round.
    """
    teacher = load_teacher(Path(args.teacher), data, rt)
    folded = fold_batchnorm(teacher)
    size = data.train.images.shape[-1]
    loss = build_loss("kd", spec_of(args.arch, data.num_classes, 1.0, size),
                      spec_of(teacher.arch, data.num_classes, 1.0, size)).to(rt.device)
    batches = memory_batches(data, rt, args.batch)

    def student():
        seed_everything(0)
        return rt.prepare(build_model(args.arch, data.num_classes))

    out = {"teacher": f"{teacher.arch} ({Path(args.teacher).name}, {folded.folded_pairs} BN folded)",
           "chunks": args.chunks, "chunk_steps": args.chunk_steps}
    ce = interleaved({"limit": LimitLoop(student(), batches, rt),
                      "engine": EngineLoop(student(), data, rt, args.batch)}, args.chunks, args.chunk_steps, args.batch)
    kd_student = student()
    with FeatureTap(kd_student) as s_tap, FeatureTap(folded) as t_tap:
        kd = interleaved({"limit": LimitLoop(student(), batches, rt, folded, loss),
                          "engine": EngineLoop(kd_student, data, rt, args.batch, kd_objective(s_tap, t_tap, loss),
                                               trainable(kd_student, loss)),
                          "limit_unfolded_teacher": LimitLoop(student(), batches, rt, teacher, loss)},
                         args.chunks, args.chunk_steps, args.batch)
    for phase, rates in (("ce", ce), ("kd", kd)):
        paired = [e / l for e, l in zip(rates["engine"], rates["limit"])]
        out[phase] = {f"{name}_img_s": round(max(r), 1) for name, r in rates.items()} | {
            "share": round(statistics.median(paired), 3), "best_share": round(max(rates["engine"]) / max(rates["limit"]), 3),
            "round_shares": [round(v, 3) for v in paired], "round_img_s": {k: [round(v) for v in r] for k, r in rates.items()}}
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
    p.add_argument("--chunks", type=int, default=24, help="limit: rounds, each loop taking a turn")
    p.add_argument("--chunk-steps", type=int, default=8, help="limit: steps per loop per round")
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
