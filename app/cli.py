"""Headless command line over the same engine the app uses.

    python -m app.cli list [--json]
    python -m app.cli run --preset quick-cpu --data-dir ../shared/data/cifar10-jpeg.tar.gz
    python -m app.cli run --resume runs/quick-cpu-20261122-101500
    python -m app.cli train-teacher --arch resnet56 --epochs 240 --out teacher.pt
    python -m app.cli plan --preset paper-cnn --set indistill.aux=off
    python -m app.cli grid --preset workshop --a 0,1,2 --b 0,1
    python -m app.cli export runs/…/checkpoints/indistill-s0.pt --out student.onnx
    python -m app.cli report --study smoke --out reports
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from . import distributed, settings
from . import events as ev
from .config import PRESETS, ConfigError, ExperimentConfig, preset
from .data import DataError
from .checkpoint import CheckpointError
from .export import ExportError
from .losses import LOSSES
from .profile import ratio_text, timing_note
from .results import RunResults, measured_phases
from .runfolder import RunIdError, new_run_id
from .sweep import SweepError


def _catalogue() -> dict:
    from models import MODELS
    return {"teachers": [n for n, e in MODELS.items() if e.role == "teacher"],
            "students": [n for n, e in MODELS.items() if e.role == "student"],
            "losses": list(LOSSES), "presets": list(PRESETS)}


def cmd_list(args) -> int:
    cat = _catalogue()
    if args.json:
        print(json.dumps(cat))
        return 0
    from models import MODELS
    for role in ("teachers", "students"):
        print(f"{role}:")
        for n in cat[role]:
            print(f"  {n:14s} {MODELS[n].summary}")
    print("losses:")
    for n, cls in LOSSES.items():
        print(f"  {n:14s} {cls.summary}")
    print("presets:")
    for n, p in PRESETS.items():
        print(f"  {n:22s} {p['summary']}")
    return 0


def _config(args) -> ExperimentConfig:
    if args.config:
        cfg = ExperimentConfig.from_dict(read_config_file(args.config))
    else:
        cfg = preset(args.preset)
    overrides: dict = {}
    if args.data_dir is None and settings.data_dir() and not args.config:
        args.data_dir = settings.data_dir()
    for key, attr in (("data.data_dir", "data_dir"), ("data.dataset", "dataset"), ("data.cache_dir", "cache_dir"),
                      ("data.train_per_class", "train_per_class"), ("data.test_per_class", "test_per_class"),
                      ("epochs_scale", "epochs_scale"), ("seeds", "seeds"), ("device", "device"),
                      ("precision", "precision")):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    cfg = cfg.with_overrides(overrides)
    return cfg.with_overrides(args.set or [])


def read_config_file(path: str) -> dict:
    """A config JSON file as a dict; ConfigError (one line) when missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"--config {path}: not valid JSON ({str(exc)[:120] or 'nested too deeply'}); expected a "
                          "config exported by the app or a run folder's config.json") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of settings, got {type(obj).__name__}")
    return obj


class Progress:
    """A one-line progress bar on stderr, fed by engine events; each event also goes to
    ``events`` (a file object) as one JSON line when given."""

    def __init__(self, quiet: bool = False, events=None) -> None:
        self.quiet, self.total, self.done = quiet, 0, 0
        self.label, self.last = "", ""
        self.events = events
        self._timing: tuple | None = None   # (experiment, its first seen time, the fraction it had then)

    def fraction_and_eta(self, now: float | None = None) -> tuple[float, float | None]:
        """The experiment's fraction done and the seconds left, from the pace since this object first
        saw *this* experiment: a study's second pair, or a resumed run's units already done, do not
        count as work done in the time measured."""
        now = time.time() if now is None else now
        exp = self.experiment
        frac = exp.done_steps / max(exp.total_steps, 1)
        if self._timing is None or self._timing[0] is not exp:
            self._timing = (exp, now, frac)
        _, since, frac0 = self._timing
        rate = (frac - frac0) / (now - since) if now > since else 0.0
        return frac, ((1 - frac) / rate if rate > 0 else None)

    def __call__(self, e: ev.Event) -> None:
        """Steps and epochs go to the bar; every other described event is printed as its line."""
        if self.events is not None:
            self.events.write(json.dumps(e.to_dict(), default=str) + "\n")
            self.events.flush()
        if isinstance(e, ev.PhaseStarted):
            self.label = f"{e.phase}" + (f" seed {e.seed}" if e.phase not in ("teacher", "aux") else "")
        if isinstance(e, ev.StepLoss):
            self.last = f"{e.segment} ep {e.epoch:.2f} loss {e.losses['total']:.4f}"
            self._bar()
        elif isinstance(e, ev.EpochMetrics):
            self.last = f"epoch {e.epoch} {ev.eval_text(e.metrics)}"
            self._bar()
        elif not isinstance(e, (ev.LayerSwitch, ev.Finished)) and e.describe() is not None:
            self._line(e.describe())

    def _bar(self) -> None:
        if self.quiet:
            return
        frac, eta = self.fraction_and_eta()
        bar = "#" * int(frac * 24)
        eta_text = "  ETA     –" if eta is None else f"  ETA {eta:5.0f}s"
        sys.stderr.write(f"\r[{bar:24s}] {frac * 100:5.1f}% {self.label}: {self.last}{eta_text} ")
        sys.stderr.flush()

    def _line(self, text: str) -> None:
        if not self.quiet:
            sys.stderr.write("\r" + " " * 110 + "\r")
        print(text, file=sys.stderr, flush=True)


def results_table(results: RunResults) -> str:
    rows = [("phase", "test acc", "± sd", "95% interval", "mAP cos", "params", "MFLOPs", "CPU ms b1", "× teacher",
             "train s")]
    for phase, r in measured_phases(results):
        m = r.get("retrieval", {}).get("cosine", {}).get("map")
        ci = r.get("test_acc_ci")
        rows.append((phase, f"{r['test_acc'] * 100:.2f}", f"{r.get('test_acc_std', 0) * 100:.2f}",
                     f"[{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else "-",
                     "-" if m is None else f"{m * 100:.2f}", f"{r['params']:,}", f"{r['flops'] / 1e6:.2f}",
                     f"{r['latency_ms_cpu_b1']:.3f}", ratio_text(r.get("latency_ratio_cpu_b1")) or "-",
                     f"{r['train_seconds']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows)
    for c in results.get("comparisons") or []:
        if c.get("diff") is not None:
            ci = f" [{c['ci'][0] * 100:+.1f}, {c['ci'][1] * 100:+.1f}]" if c.get("ci") else ""
            table += (f"\n{c['b']} − {c['a']}, {c['metric']}: {c['diff'] * 100:+.2f} points{ci} — {c['verdict']} "
                      f"({c['method']})")
    where = results.get("data", {}).get("test_data")
    return table + (f"\ntest acc on the {where}; {timing_note(results.get('latency'), bold='')}"
                    if where and len(rows) > 1 else "")


def _progress(args) -> Progress:
    """The progress printer; under torchrun only rank 0 prints or writes ``--events``."""
    main = distributed.from_env().main
    events = args.stack.enter_context(open(args.events, "w")) if args.events and main else None
    return Progress(args.quiet or not main, events)


def cmd_run(args) -> int:
    from .experiment import Experiment
    progress = _progress(args)
    if args.resume:
        exp = Experiment(run_dir=args.resume, resume=True, emit=progress)
    else:
        exp = Experiment(_config(args), run_dir=args.run_dir, runs_root=args.out, emit=progress)
    progress.experiment = exp
    results = exp.run()
    if not exp.dist.main:
        return 0 if results["status"] == "finished" else 1
    print(results_table(results))
    print(f"run folder: {exp.run_dir}  (results.json, config.json, checkpoints/)")
    return 0 if results["status"] == "finished" else 1


def cmd_plan(args) -> int:
    from .plan import make_plan
    plan = make_plan(_config(args))
    out = {"ok": plan.ok, "problems": plan.problems, "verdict": plan.verdict.to_dict() if plan.verdict else None,
           "schedule": plan.schedule_dicts()}
    print(json.dumps(out, indent=2))
    return 0 if plan.ok else 2


def cmd_train_teacher(args) -> int:
    from .experiment import Experiment
    cfg = ExperimentConfig(name=f"teacher-{args.arch}").with_overrides({
        "teacher.arch": args.arch, "teacher.epochs": args.epochs, "teacher.lr": args.lr, "student.arch": args.arch,
        "phases.baseline": False, "phases.kd": False, "phases.indistill": False,  # the teacher phase only
        "eval.retrieval": False, "eval.info_flow": False})
    data_dir = args.data_dir or settings.data_dir()
    cfg = cfg.with_overrides({k: v for k, v in {"data.data_dir": data_dir, "data.dataset": args.dataset,
                                                 "data.train_per_class": args.train_per_class,
                                                 "data.test_per_class": args.test_per_class,
                                                 "device": args.device, "precision": args.precision,
                                                 "optim.batch_size": args.batch_size}.items()
                              if v is not None})
    cfg = cfg.with_overrides(args.set or [])
    progress = _progress(args)
    exp = Experiment(cfg, runs_root=args.runs, emit=progress)
    progress.experiment = exp
    results = exp.run()
    if results["status"] != "finished":
        return 1
    if not exp.dist.main:  # rank 0 writes --out
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exp.ckpt("teacher").read_bytes())
    acc = results["phases"]["teacher"]["test_acc"]
    print(json.dumps({"checkpoint": str(out), "arch": args.arch, "test_acc": acc,
                      "data": results["data"]["description"], "train_seconds": results["phases"]["teacher"]["train_seconds"]}))
    return 0


def _backend(args, device: str):
    """None for ``--backend local``; a Ray backend whose tasks declare one GPU each when the
    runs are set to ``device=cuda`` (``--task-gpus`` overrides)."""
    from .sweep import make_backend
    gpus = args.task_gpus if args.task_gpus is not None else (1 if device == "cuda" else 0)
    return make_backend(args.backend, args.address, num_cpus=args.ray_cpus, task_cpus=args.task_cpus, task_gpus=gpus)


def _sweep_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the units run")
    g.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: here, one unit after another; ray: units as Ray tasks (pip install -r requirements-ray.txt)")
    g.add_argument("--address", help="join this Ray cluster ('auto', or ray://HOST:10001); default: start a local Ray")
    g.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray (default: all cores)")
    g.add_argument("--task-cpus", type=int, default=1, help="CPUs (training threads) each task declares (default 1)")
    g.add_argument("--task-gpus", type=float, help="GPUs each task declares (default 1 when device=cuda, else 0)")


def cmd_grid(args) -> int:
    from .grid import CurriculumGrid, parse_values
    if distributed.from_env().enabled:
        raise ConfigError("grid runs in one process; under torchrun use run or train-teacher")
    cfg = _config(args)
    progress = _progress(args)
    run_dir = Path(args.out) / new_run_id(f"grid-{cfg.name}")
    backend = _backend(args, cfg.device)
    grid = CurriculumGrid(cfg, parse_values(args.a, "--a"), parse_values(args.b, "--b"), run_dir, emit=progress,
                          backend=backend)
    progress.experiment = grid
    try:
        results = grid.run()
    finally:
        if backend is not None:
            backend.shutdown()
    print("mode        a     b   warm-up + KD epochs   test acc % [95 % interval]")
    for c in results["grid"]["cells"]:
        ci = c.get("test_acc_ci") or [c["test_acc"]] * 2
        print(f"{c['mode']:10s} {c['a']:5g} {c['b']:5g}   {c['warmup_epochs']:7.2f} + {c['kd_epochs']:<7.2f}     "
              f"{c['test_acc'] * 100:.2f} [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]")
    for c in results["grid"].get("comparisons", []):
        print(f"{c['mode']} a={c['a']:g} b={c['b']:g} − no warm-up: {c['diff'] * 100:+.2f} points "
              f"[{c['ci'][0] * 100:+.1f}, {c['ci'][1] * 100:+.1f}] — {c['verdict']}")
    print(f"grid folder: {run_dir}")
    return 0 if results["status"] == "finished" else 1


def cmd_report(args) -> int:
    from . import report
    s = report.study(args.study)
    if args.estimate:
        minutes = report.estimate_minutes(s, args.data_dir or settings.data_dir() or "x")
        print(json.dumps({"study": s.name, "minutes_on_2_cpu_cores": minutes, "total": round(sum(minutes.values()), 1)}))
        return 0
    progress = _progress(args)
    backend = _backend(args, str(s.settings.get("device", "auto")))
    try:
        root = report.run_study(s, args.out, data_dir=args.data_dir, cache_dir=args.cache_dir, emit=progress,
                                on_experiment=lambda exp: setattr(progress, "experiment", exp), backend=backend,
                                parts=report.PARTS if args.part == "all" else () if args.part == "report" else (args.part,))
    finally:
        if backend is not None:
            backend.shutdown()
    print(f"report: {root / 'report.md'}, {root / 'report.html'}, {root / 'report.csv'}")
    if args.ship:
        from . import library
        for pair in s.pairs:
            for name in (pair.name, f"{pair.name}-grid"):   # the arms, and the Fig. 5 grid when it ran
                if (root / name / "results.json").is_file():
                    print(f"shipped: {library.ship(root / name, f'{s.name}-{name}')}")
    return 0


def cmd_import_reference(args) -> int:
    from .reference_models import import_reference
    meta = import_reference(args.file, args.arch, args.out, args.note or "")
    print(f"wrote {args.out}: {meta['arch']} from {Path(args.file).name} ({meta['provenance']['origin']}); "
          f"normalisation: the reference's mean/std")
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx
    report = export_onnx(args.checkpoint, args.out, data_dir=args.data_dir, runs=args.runs, runs_b256=args.runs_b256)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"exported {report['arch']} ({report['phase'] or 'model'}) to {report['onnx_path']} "
              f"({report['onnx_bytes'] / 1e6:.2f} MB, opset {report['opset']}, outputs logits + embedding)")
        print(f"check on {report['images']}: max abs diff {report['max_abs_diff']:.2e} "
              f"({'ok' if report['ok'] else 'FAILED'}: tolerance {report['tolerance']:g}), "
              f"top-1 agreement {report['top1_agreement'] * 100:.1f} %")
        print(f"CPU latency ({report['threads']} threads)  batch 1: onnxruntime {report['onnx_ms_b1']:.3f} ms, "
              f"PyTorch {report['torch_ms_b1']:.3f} ms;  batch 256: onnxruntime {report['onnx_ms_b256']:.1f} ms, "
              f"PyTorch {report['torch_ms_b256']:.1f} ms")
    return 0 if report["ok"] else 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="ImageFolder tree/archive, or a folder holding torchvision's CIFAR files")
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "folder"])
    p.add_argument("--cache-dir", help="where decoded tensors are cached (default ~/.cache/indistill)")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--test-per-class", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast or fp32 (auto: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. indistill.a=3")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _events(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", metavar="FILE", help="also write every engine event to FILE, one JSON object a line")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description="InDistill Studio, headless")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="architectures, losses and presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    for name, func, help_ in (("run", cmd_run, "run an experiment"), ("plan", cmd_plan, "check a config, show the schedule")):
        p = sub.add_parser(name, help=help_)
        src = p.add_mutually_exclusive_group()
        src.add_argument("--preset", default="quick-cpu", choices=list(PRESETS))
        src.add_argument("--config", help="a config JSON (as written to a run folder or exported by the app)")
        if name == "run":
            src.add_argument("--resume", metavar="RUN_DIR", help="continue a cancelled or crashed run")
            p.add_argument("--out", default="runs", help="folder for run folders (default runs/)")
            p.add_argument("--run-dir", help="exact run folder to write")
            _events(p)
        p.add_argument("--epochs-scale", type=float, help="multiply every epoch count")
        p.add_argument("--seeds", type=int, help="seeds for the student phases")
        _common(p)
        p.set_defaults(func=func)
    p = sub.add_parser("grid", help="the a × b curriculum grid (InDistill student only) plus joint and no-warm-up "
                                    "controls, every run student.epochs in all (warm-up included)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="quick-cpu", choices=list(PRESETS))
    src.add_argument("--config")
    p.add_argument("--a", default="0.25,0.5", help="comma-separated a values")
    p.add_argument("--b", default="0,0.25", help="comma-separated b values")
    _events(p)
    p.add_argument("--out", default="runs")
    p.add_argument("--epochs-scale", type=float)
    p.add_argument("--seeds", type=int)
    _common(p)
    _sweep_options(p)
    p.set_defaults(func=cmd_grid)
    p = sub.add_parser("train-teacher", help="train a teacher with CE and save its checkpoint")
    p.add_argument("--arch", required=True)
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--runs", default="runs", help="folder for the run folder")
    _events(p)
    _common(p)
    p.set_defaults(func=cmd_train_teacher)
    p = sub.add_parser("report", help="run a declared study (resumable) and write report.md/.html/.csv")
    p.add_argument("--study", required=True, help="smoke | cpu | reference | paper")
    p.add_argument("--out", default="reports", help="folder for studies (default reports/)")
    p.add_argument("--data-dir", help="the CIFAR-10 JPEG copy (default $INDISTILL_DATA_DIR)")
    p.add_argument("--cache-dir", help="where decoded tensors are cached")
    p.add_argument("--estimate", action="store_true", help="print the cost model's minutes per pair; run nothing")
    p.add_argument("--part", choices=["all", "arms", "grids", "released", "report"], default="all",
                   help="arms: each pair's baseline/KD/InDistill+KD seeds; grids: each pair's a × b grid (Fig. 5); "
                        "released: the InDistill authors' released models (the reference study); report: run "
                        "nothing, write the report from what is recorded (an unfinished pair over its seeds so far)")
    p.add_argument("--ship", action="store_true",
                   help="then copy each pair's results (curves downsampled) into assets/library/<study>-<pair>/")
    p.add_argument("--quiet", action="store_true")
    _events(p)
    _sweep_options(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="export a checkpoint to ONNX, check it against PyTorch, time both "
                                      "(needs: pip install -r requirements-extra.txt)")
    p.add_argument("checkpoint", help="a checkpoint saved by InDistill Studio (run folder or train-teacher --out)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--data-dir", help="test images for the check (default: the checkpoint's data when "
                                      "$INDISTILL_DATA_DIR names it, else the embedded CIFAR-10 sample)")
    p.add_argument("--runs", type=int, default=200, help="timed runs at batch 1 (median reported)")
    p.add_argument("--runs-b256", type=int, default=20, help="timed runs at batch 256")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import-reference", help="convert an InDistill authors' released CIFAR-10 model "
                                                "(Cnn32 / Cnn32_Small state dict) into a project checkpoint")
    p.add_argument("file", help="their .pt file (e.g. ../shared/reference/models/auxiliary_cifar10.pt)")
    p.add_argument("--arch", required=True, choices=["cnn_16_32_64", "cnn_8_16_32"],
                   help="cnn_16_32_64 for their Cnn32, cnn_8_16_32 for their Cnn32_Small")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--note", help="a provenance note stored with it")
    p.set_defaults(func=cmd_import_reference)
    args = parser.parse_args(argv)
    try:
        with contextlib.ExitStack() as args.stack:  # files a command opens (--events)
            return args.func(args)
    except (ConfigError, DataError, CheckpointError, RunIdError, ExportError, SweepError, settings.SettingError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
