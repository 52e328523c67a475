"""The GPU path proven in one prepared call (run through ``bench/gpu_check.sh``).

Steps, each a subprocess with its own time cap inside one overall deadline (``--budget-s``);
the summary (``gpu_check.json``) is rewritten after every step, so whatever stops the call,
what finished is kept:

1. ``prepare``    torch, CUDA, device, driver, bf16 support; the engine imports without Gradio;
                  the carried CIFAR-10 (JPEG copy) archive is extracted (names any missing wheel)
2. ``tests``      the engine's device tests (``pytest -m device``) on ``--device``
3. ``throughput`` the engine (bf16, tensor-resident batches on CUDA) vs a reference-style loop
                  (DataLoader, fp32, batch 128) for CNN 8/16/32 and ResNet-18 students
4. ``reference``  the reference procedure from the authors' auxiliary teacher to CNN 8/16/32 at
                  full data and schedule (70 epochs, 1 seed), beside the authors' released
                  student measured the same way
5. ``paper``      if time is left: the start of the ``paper`` chain (a ResNet-18 teacher for
                  ``--paper-epochs`` epochs)

``--device cpu --tiny`` is the dry run (the sample data, tiny epochs; seconds): CI runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NEEDED = ("torch", "torchvision", "numpy", "PIL", "pytest")   # the engine and its device tests (no Gradio)


def find_archive(given: str | None) -> Path | None:
    for cand in (given, ROOT / ".gpu" / "cifar10-jpeg.tar.gz", os.environ.get("INDISTILL_DATA_DIR"),
                 ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def prepare(args, scratch: Path) -> dict:
    """What the machine has, and the data ready to read."""
    info: dict = {"python": platform.python_version()}
    missing = []
    for name in NEEDED:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        wheel = {"PIL": "pillow"}
        info["missing"] = [wheel.get(m, m) for m in missing]
        raise RuntimeError("missing packages: " + ", ".join(info["missing"]) + " — carry their wheels in .gpu/wheels "
                           "and `pip install --no-index --find-links .gpu/wheels …` before the check")
    import torch
    info |= {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
             "cuda_version": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {"device": p.name, "memory_gib": round(p.total_memory / 2 ** 30, 1), "sm_count": p.multi_processor_count,
                 "bf16": torch.cuda.is_bf16_supported()}
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "nvidia-smi not available"
    elif args.device == "cuda":
        raise RuntimeError("torch sees no CUDA device (torch.cuda.is_available() is False)")
    import app.experiment  # noqa: F401  the engine, without Gradio
    info["gradio_imported"] = "gradio" in sys.modules
    if args.tiny:
        from app.config import SAMPLE_DATA
        info["data"] = str(SAMPLE_DATA)
        return info
    archive = find_archive(args.data)
    if archive is None:
        raise RuntimeError("no CIFAR-10 (JPEG copy): copy ../shared/data/cifar10-jpeg.tar.gz into .gpu/ and carry .gpu")
    start = time.perf_counter()
    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "data", filter="data")
    tops = [p for p in (scratch / "data").iterdir() if p.is_dir()]
    root = tops[0] if len(tops) == 1 and not (scratch / "data" / "train").is_dir() else scratch / "data"
    info |= {"data": str(root), "archive": str(archive), "extract_s": round(time.perf_counter() - start, 1)}
    return info


def reference_step(args) -> dict:
    """The reference procedure, one seed, full schedule (or tiny), and the released student beside it."""
    from app.config import preset
    from app.experiment import Experiment
    over = {"device": args.device, "seeds": 1, "phases.baseline": False, "eval.latency_runs": 5,
            "data.dataset": "folder", "data.data_dir": args.data_root}
    if args.tiny:
        over |= {"epochs_scale": 0.02, "data.train_per_class": 20, "data.test_per_class": 5, "optim.batch_size": 32}
    cfg = preset("reference-cifar10").with_overrides(over)
    start = time.perf_counter()
    res = Experiment(cfg, run_dir=Path(args.scratch) / "reference").run()
    out = {"wall_s": round(time.perf_counter() - start, 1), "device": res.get("device"),
           "data": res["data"]["description"], "test_images": res["data"]["test"], "arms": {}}
    for phase in ("teacher", "kd", "indistill"):
        r = res["phases"][phase]
        cos = r["retrieval"]["cosine"]
        out["arms"][phase] = {"map_cosine": cos["map"], "map_cosine_reference": cos["map_reference"],
                              "map_euclidean": r["retrieval"]["euclidean"]["map"], "epochs": r.get("epochs"),
                              "train_seconds": r.get("train_seconds")}
    out["comparisons"] = [{k: c.get(k) for k in ("a", "b", "metric", "diff", "ci", "verdict")}
                          for c in res.get("comparisons", [])]
    if not args.tiny:
        from app.config import DataConfig
        from app.reference_models import default_models_dir, evaluate_released
        models = Path(args.released or default_models_dir())
        if models.is_dir():
            rel = evaluate_released(models, DataConfig(dataset="folder", data_dir=args.data_root))
            out["released"] = {k: {"map_cosine": v["cosine"]["map"], "map_cosine_reference": v["cosine"]["map_reference"],
                                   "published_map_cosine": v["published"]["map_cosine"]}
                               for k, v in rel["models"].items()}
        else:
            out["released"] = f"not measured: {models} not carried (copy ../shared/reference/models into .gpu/reference)"
    return out


def paper_step(args) -> dict:
    """The start of the paper chain: a ResNet-18 teacher for a stated number of epochs."""
    from app.config import preset
    from app.experiment import Experiment
    arch = "resnet20" if args.tiny else "resnet18"  # the dry run proves the step, not ResNet-18's speed on a CPU
    over = {"device": args.device, "seeds": 1, "teacher.arch": arch, "teacher.epochs": args.paper_epochs,
            "phases.baseline": False,
            "phases.kd": False, "phases.indistill": False, "data.dataset": "folder", "data.data_dir": args.data_root,
            "eval.latency_runs": 5, "eval.retrieval": False}
    if args.tiny:
        over |= {"data.train_per_class": 10, "data.test_per_class": 5, "optim.batch_size": 32, "eval.info_flow": False}
    start = time.perf_counter()
    res = Experiment(preset("paper-cnn").with_overrides(over), run_dir=Path(args.scratch) / "paper").run()
    t = res["phases"]["teacher"]
    return {"teacher": arch, "epochs": args.paper_epochs, "test_acc": t["test_acc"],
            "train_seconds": t["train_seconds"], "wall_s": round(time.perf_counter() - start, 1)}


def run_sub(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[str, int | None, str]:
    """Run ``cmd`` with a cap; returns (status, exit code, its output's tail), streaming the output."""
    print("$ " + " ".join(cmd), flush=True)
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=(os.environ | (env or {})))
    deadline = time.monotonic() + timeout
    try:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(cmd, timeout)
            if sel.select(timeout=min(left, 1.0)):
                line = proc.stdout.readline()
                if not line:
                    break
                print(line, end="", flush=True)
                lines.append(line)
                del lines[:-200]
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "timeout", None, "".join(lines[-40:])
    return ("ok" if proc.returncode == 0 else "failed"), proc.returncode, "".join(lines[-40:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="the dry run: sample data, tiny epochs")
    ap.add_argument("--out", default=str(ROOT / ".gpu" / "out"))
    ap.add_argument("--data", help="CIFAR-10 (JPEG copy) archive (default .gpu/cifar10-jpeg.tar.gz)")
    ap.add_argument("--released", help="the authors' released models (default .gpu/reference, ../shared/reference/models)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting steps and end before this (seconds)")
    ap.add_argument("--paper-epochs", type=float, default=3.0)
    ap.add_argument("--step", choices=["reference", "paper"], help=argparse.SUPPRESS)   # a subprocess's own step
    ap.add_argument("--data-root", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:  # inside a step's subprocess: print its JSON on the last line
        import torch
        torch.set_num_threads(min(os.cpu_count() or 1, 16))
        result = reference_step(args) if args.step == "reference" else paper_step(args)
        print("RESULT " + json.dumps(result))
        return 0

    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": args.device, "tiny": args.tiny, "budget_s": args.budget_s, "steps": {}}

    def left() -> float:
        return args.budget_s - (time.monotonic() - start)

    def record(name: str, **entry) -> None:
        summary["steps"][name] = entry
        summary["elapsed_s"] = round(time.monotonic() - start, 1)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
        print(f"== {name}: {entry.get('status')} ({summary['elapsed_s']} s elapsed)", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if not args.released and (ROOT / ".gpu" / "reference").is_dir():
        args.released = str(ROOT / ".gpu" / "reference")
    try:
        info = prepare(args, scratch)
    except Exception as exc:  # nothing else can run: say why
        record("prepare", status="failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    record("prepare", status="ok", **info)
    data_root = info["data"]
    env = {"INDISTILL_TEST_DEVICE": args.device, "INDISTILL_CACHE": str(scratch / "cache")}
    py = sys.executable
    tiny = ["--tiny"] if args.tiny else []
    # (name, command, cap in seconds, the least time worth starting it with)
    steps = [
        ("tests", [py, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider", "tests/test_device.py"], 150, 30),
        ("throughput", None, 120, 30),
        ("reference", [py, "bench/gpu_check.py", "--step", "reference", "--device", args.device, "--data-root",
                       data_root, "--scratch", str(scratch)] + tiny
         + (["--released", args.released] if args.released else []), 240, 60),
        ("paper", [py, "bench/gpu_check.py", "--step", "paper", "--device", args.device, "--data-root", data_root,
                   "--scratch", str(scratch), "--paper-epochs", str(args.paper_epochs)] + tiny, 120, 45),
    ]
    for name, cmd, cap, least in steps:
        if left() < least:
            record(name, status="skipped", reason=f"{left():.0f} s left of the {args.budget_s:g} s budget")
            continue
        if name == "throughput":
            results, status = {}, "ok"
            for arch in ("cnn_8_16_32", "resnet18"):
                images = ["--images", "64", "--batch", "32", "--repeats", "1"] if args.tiny else \
                    ["--images", "20000", "--repeats", "2"]
                st, code, tail = run_sub([py, "bench/throughput.py", "--device", args.device, "--parts", "reference",
                                          "--arch", arch, "--data-dir", data_root, "--json"] + images,
                                         min(cap / 2, left()), env)
                last = [ln for ln in tail.splitlines() if ln.startswith("{")]
                results[arch] = json.loads(last[-1]) if st == "ok" and last else {"status": st, "tail": tail[-800:]}
                status = status if st == "ok" else st
            record(name, status=status, results=results)
            continue
        st, code, tail = run_sub(cmd, min(cap, left()), env)
        entry = {"status": st, "exit_code": code}
        result = [ln for ln in tail.splitlines() if ln.startswith("RESULT ")]
        if result:
            entry["result"] = json.loads(result[-1][len("RESULT "):])
        else:
            entry["tail"] = tail[-1500:]
        record(name, **entry)
    failed = [n for n, e in summary["steps"].items() if e["status"] in ("failed", "timeout")]
    summary["ok"] = not failed
    record("done", status="ok" if not failed else "failed", failed=failed)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
