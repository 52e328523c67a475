"""Training throughput: a reference-style loop vs the engine's pipeline, side by side.

Both train the same student from the same initialisation for the same number of
images, in one process, alternating ``--repeats`` times (the median of each is reported,
since a shared 2-core machine is noisy):

- reference: a torchvision-style dataset of uint8 images → PIL RandomCrop(32, pad 4) /
  RandomHorizontalFlip / ToTensor / Normalize → DataLoader (shuffle, batch 128,
  workers = cores) → fp32 SGD step;
- engine: uint8 tensors on the device → batched crop/flip/normalise
  (``app.augment.BatchStream``) → ``app.train.run_segments`` (bf16 autocast and
  channels-last on CUDA; fp32 on the CPU), batch 128.

    python bench/throughput.py --device cpu --data-dir ../shared/data/cifar10-jpeg.tar.gz --json
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
from app.config import DataConfig  # noqa: E402
from app.data import load_dataset  # noqa: E402
from app.device import resolve, seed_everything  # noqa: E402
from app.train import LoopContext, Segment, ce_objective, run_segments, trainable  # noqa: E402
from models import build_model  # noqa: E402


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


def engine_loop(model, data, images: int, rt, batch: int) -> float:
    stream = BatchStream(data.train, batch, rt.device, data.mean, data.std, seed=0, channels_last=rt.channels_last)
    steps = max(1, images // batch)
    ctx = LoopContext(rt, lambda e: None, threading.Event(), "bench", 0)
    warm = Segment("warm-up", 3, ce_objective(model), trainable(model), "sgd", 0.05)
    run_segments(model, stream, [warm], ctx)
    seg = Segment("CE", steps, ce_objective(model), trainable(model), "sgd", 0.05)
    if rt.cuda:
        torch.cuda.synchronize()
    seconds = run_segments(model, stream, [seg], ctx)
    if rt.cuda:
        torch.cuda.synchronize()
    return steps * stream.batch_size / seconds


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
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rt = resolve(args.device)
    data = load_dataset(DataConfig(data_dir=args.data_dir, cache_dir=args.cache_dir))
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
    out = {"arch": args.arch, "device": rt.describe(), "images": args.images, "batch": args.batch,
           "reference_workers": workers, "reference_img_s": round(ref, 1), "engine_img_s": round(eng, 1),
           "ratio": round(eng / ref, 2), "reference_runs": [round(v) for v in refs],
           "engine_runs": [round(v) for v in engs], "data": data.description}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
