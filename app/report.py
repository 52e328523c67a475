"""Declared studies (pairs × arms × seeds × settings) and the report they produce.

``python -m app.cli report --study NAME`` runs every pair of a study as one
:class:`~app.experiment.Experiment` in ``<out>/<study>/<pair>/`` (resumable unit by unit:
a pair folder that holds a config.json is resumed and its finished units are skipped),
then writes ``report.md`` (tables with intervals, paired differences with verdicts, cost),
``report.html`` (the same, with the plotly figures inlined: self-contained) and
``report.csv`` (one row per unit, per aggregate and per comparison) beside the pairs.
"""
from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import events as ev
from . import render, settings
from .config import SHIPPED_PREFIX, ConfigError, ExperimentConfig, preset
from .profile import ratio_text, timing_note
from .results import RunResults, measured_phases, phase_units
from .runfolder import RunFolder, read_json, resolve, snapshot_from_results, write_json

ARMS = ("baseline", "kd", "indistill")
PARTS = ("arms", "grids", "released")


@dataclass(frozen=True)
class GridSpec:
    """A pair's a × b curriculum grid (the paper's Fig. 5) at a total of ``epochs`` student
    epochs per cell, warm-up included (:class:`~app.grid.CurriculumGrid`)."""
    a: tuple[float, ...]
    b: tuple[float, ...]
    epochs: float


@dataclass(frozen=True)
class Pair:
    """One teacher → student pair of a study: a preset and the overrides that make it this pair."""
    name: str                      # its folder under the study (a run id)
    preset: str
    overrides: dict
    summary: str
    grid: GridSpec | None = None   # Fig. 5, run after the arms


@dataclass(frozen=True)
class Study:
    name: str
    summary: str
    pairs: tuple[Pair, ...]
    settings: dict = field(default_factory=dict)   # applied to every pair (seeds, data subset, evaluation)
    needs_data_dir: bool = True    # the CIFAR-10 JPEG copy: --data-dir or $INDISTILL_DATA_DIR
    gpu: bool = False              # declared for a GPU (not run on the CPU by default)
    released: bool = False         # also measure the InDistill authors' released models (part ``released``)

    def configs(self, data_dir: str | None = None, cache_dir: str | None = None) -> list[tuple[Pair, ExperimentConfig]]:
        """Each pair's full configuration; ConfigError when the study needs data it wasn't given."""
        data_dir = data_dir or settings.data_dir()
        if self.needs_data_dir and not data_dir:
            raise ConfigError(f"study {self.name!r} needs the CIFAR-10 (JPEG copy): pass --data-dir or set "
                              "INDISTILL_DATA_DIR")
        extra = {"data.data_dir": data_dir} if self.needs_data_dir else {}
        extra |= {"data.cache_dir": cache_dir} if cache_dir else {}
        return [(p, preset(p.preset).with_overrides(self.settings | p.overrides | extra | {"name": p.name}))
                for p in self.pairs]


_CNN_TEACHER = SHIPPED_PREFIX + "teachers/cnn_16_32_64.pt"
# the cpu study's Fig. 5: a ∈ {0.5, 1} × b ∈ {0, 0.5} at the arms' total of 15 student epochs
CPU_GRID = GridSpec((0.5, 1.0), (0.0, 0.5), 15)
_SMALL_EVAL = {"eval.latency_runs": 2, "eval.info_batch": 32, "optim.batch_size": 24}

STUDIES: dict[str, Study] = {
    "smoke": Study(
        "smoke", "seconds: the shipped CNN 16/32/64 → CNN 8/16/32 on 12 images per class of the embedded sample, "
                 "2 seeds, one KD epoch (for the tests)",
        (Pair("cnn", "workshop", {"budget": "added", "student.epochs": 1, "indistill.a": 0.5, "indistill.b": 0.25},
              "shipped CNN 16/32/64 → CNN 8/16/32", GridSpec((0.1,), (0.0,), 1)),),
        {"seeds": 2, "device": "cpu", "data.train_per_class": 12, "data.test_per_class": 4,
         "data.val_per_class": 3} | _SMALL_EVAL, needs_data_dir=False),
    # Sized with app.public.estimate (2 CPU cores; `report --study cpu --estimate` prints it): the CNN pair on
    # 1,000 images per class, the residual pair on 500 (its ResNets cost ~30× the CNNs' FLOPs per image).
    "cpu": Study(
        "cpu", "CIFAR-10 (JPEG copy), 1,000 training images per class for the CNN pair and 500 for the residual "
               "pair (plus 10 % more per class held out of the training folder for the per-epoch curves), "
               "evaluated on the full 10,000-image test set; 5 seeds; "
               "equal-epoch controls; 2 CPU cores",
        (Pair("cnn", "workshop", {"data.dataset": "cifar10", "teacher.checkpoint": _CNN_TEACHER,
                                  "budget": "added", "student.epochs": 6, "indistill.a": 1.0, "indistill.b": 0.5},
              "shipped CNN 16/32/64 (trained on all 50,000 images) → CNN 8/16/32", CPU_GRID),
         Pair("resnet", "quick-cpu", {"teacher.arch": "resnet20", "student.arch": "resnet8", "teacher.epochs": 15,
                                      "teacher.lr": 0.1, "student.epochs": 6, "indistill.a": 1.0,
                                      "indistill.b": 0.5, "data.train_per_class": 500, "data.val_per_class": 50},
              "ResNet-20 (trained in the study, 15 epochs on 5,000 images) → ResNet-8", CPU_GRID)),
        {"seeds": 5, "device": "cpu", "precision": "fp32", "data.train_per_class": 1000,
         "data.test_per_class": None, "data.val_per_class": 100, "eval.max_queries": 2000,
         "eval.latency_runs": 20}),
    # Issue 13: the authors' last step at their own scale, from their own auxiliary teacher, with the
    # equal-budget control they never ran (PKT alone, 70 epochs, the same schedule); then the studio
    # recipe at the same 70-epoch total. `report --study reference --estimate` gives its time.
    "reference": Study(
        "reference", "CIFAR-10 (JPEG copy), all 50,000 training images (per-epoch curves on a fixed probe of 1,000 "
                     "of them; no validation split, as the reference), the full 10,000-image test set; the InDistill "
                     "authors' auxiliary teacher → CNN 8/16/32; 2 CPU cores",
        (Pair("pkt", "reference-cifar10", {"seeds": 5},
              "the reference procedure: CE baseline (Adam 1e-3 × 50 + 1e-4 × 30), PKT alone for 70 epochs "
              "(the control), InDistill 12 warm-up + 58 PKT epochs; Adam re-created every epoch, 1e-3 then 1e-4 "
              "from epoch 60; no cross-entropy in the PKT arms"),
         Pair("studio", "reference-cifar10", {"seeds": 3, "indistill.procedure": "studio", "kd.loss": "kd",
                                             "student.epochs": 52, "phases.baseline": False},
              "the studio procedure at the same 70-epoch total: Hinton KD + CE for 70 epochs vs InDistill "
              "(a = 2, b = 1 with the embedding segment: 18 warm-up epochs) + 52 KD epochs; SGD, cosine per segment")),
        {"device": "cpu", "precision": "fp32", "data.test_per_class": None, "eval.max_queries": None,
         "eval.latency_runs": 20}, released=True),
    "paper": Study(
        "paper", "the reference setup for a GPU: ResNet-18 → auxiliary CNN 16/32/64 → CNN 8/16/32, all 50,000 "
                 "training images (500 per class held out), full test set, the reference epochs (200 / 50), 5 seeds",
        (Pair("resnet18-cnn", "paper-cnn", {}, "ResNet-18 → aux CNN 16/32/64 (width 2) → CNN 8/16/32, reference "
                                                "procedure"),),
        {"seeds": 5, "device": "cuda"}, gpu=True),
}


def study(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; declared: {', '.join(STUDIES)}")
    return STUDIES[name]


def estimate_minutes(s: Study, data_dir: str | None = "x") -> dict[str, float]:
    """Minutes per pair on 2 CPU cores by the public cost model (:func:`app.public.estimate`)."""
    from .plan import make_plan
    from .public import CPU_MODEL, dataset_size, estimate
    out = {}
    for pair, cfg in s.configs(data_dir):  # the images each pair selects, counted as the data module selects them
        e = estimate(cfg, make_plan(cfg), *dataset_size(cfg), CPU_MODEL)
        out[pair.name] = round(e.minutes, 1)
    return out


def run_study(s: Study, out: str | Path = "reports", *, data_dir: str | None = None, cache_dir: str | None = None,
              emit: Callable[[ev.Event], None] | None = None,
              on_experiment: Callable[[object], None] | None = None, backend=None,
              parts: tuple[str, ...] = PARTS) -> Path:
    """Run (or resume) every pair of ``s`` under ``<out>/<study>/``, then write the report; returns its folder.

    ``backend``: None runs the pairs here, one unit after another; a :class:`~app.sweep.RayBackend`
    runs each pair's shared networks, then every student unit of every pair, as Ray tasks.
    ``parts``: ``arms`` (the pairs' experiments), ``grids`` (each pair's a × b grid) and/or
    ``released`` (a study that declares it: the InDistill authors' released models measured on the
    same images, once, in ``released.json``)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ConfigError(f"unknown part(s) {sorted(unknown)}; a study has {', '.join(PARTS)}")
    root = Path(out) / s.name
    root.mkdir(parents=True, exist_ok=True)
    configs = s.configs(data_dir, cache_dir)
    if "arms" in parts:
        results = _run_pairs_here(configs, root, emit, on_experiment) if backend is None else \
            _run_pairs_on(backend, configs, root, emit)
        for (pair, _), r in zip(configs, results):
            if r.get("status") != "finished":
                raise RuntimeError(f"pair {pair.name} did not finish; run the same command again to resume it")
    for pair, cfg in configs:
        if pair.grid and "grids" in parts:
            run_pair_grid(pair, cfg, root, emit=emit, on_experiment=on_experiment, backend=backend)
    if s.released and "released" in parts and not (root / "released.json").is_file():
        from .reference_models import default_models_dir, evaluate_released
        log = (lambda m: emit(ev.Log(m))) if emit else (lambda _m: None)
        write_json(evaluate_released(default_models_dir(), configs[0][1].data, log), root / "released.json")
    write_report(s, root)
    return root


def partial_results(run_dir: Path) -> dict:
    """An unfinished pair's results aggregated over the seeds recorded so far. The pair is resumed
    from a scratch copy of its config.json and results.json, so nothing is written into its folder;
    no runtime or data is needed (units a sweep task left ``cost_pending`` get their architecture
    timed here, on the CPU, together with the others: :meth:`~app.experiment.Experiment.fill_costs`)."""
    import shutil
    import tempfile
    from .experiment import Experiment
    pair = RunFolder(Path(run_dir))
    with tempfile.TemporaryDirectory(prefix="indistill-report-") as tmp:
        scratch = RunFolder(Path(tmp))
        for name in ("config", "results"):
            shutil.copyfile(getattr(pair, name), getattr(scratch, name))
        exp = Experiment(run_dir=scratch.path, resume=True)
        for phase in exp.plan.schedules:
            if any(phase_units(phase, exp.results["phases"].get(phase))):
                exp.aggregate(phase)
        exp.compare()
        return exp.results


def run_pair_grid(pair: Pair, cfg: ExperimentConfig, root: Path, *, emit=None, on_experiment=None, backend=None) -> dict:
    """The pair's a × b grid (with the joint and no-warm-up controls) in ``<root>/<pair>-grid/``,
    sharing the pair's teacher (and auxiliary teacher); finished cells are not run again."""
    from .grid import CurriculumGrid
    folder = RunFolder(resolve(root, pair.name))
    shared: dict = {"student.epochs": pair.grid.epochs}
    for key, unit, given in (("teacher.checkpoint", "teacher", cfg.teacher.checkpoint),
                             ("indistill.aux_checkpoint", "aux", cfg.indistill.aux_checkpoint)):
        if folder.checkpoint(unit).is_file() and not given:  # else the grid's first cell trains it
            shared[key] = str(folder.checkpoint(unit))
    grid = CurriculumGrid(cfg.with_overrides(shared), list(pair.grid.a), list(pair.grid.b),
                          resolve(root, f"{pair.name}-grid"), emit=emit, backend=backend)
    if on_experiment is not None:
        on_experiment(grid)
    out = grid.run()
    if out["status"] != "finished":
        raise RuntimeError(f"the grid of pair {pair.name} did not finish; run the same command again to resume it")
    return out


def _run_pairs_here(configs, root: Path, emit, on_experiment) -> list[dict]:
    """Each pair as one experiment here, one unit after another (a pair folder with a config resumes)."""
    from .experiment import Experiment
    out = []
    for pair, cfg in configs:
        folder = RunFolder(resolve(root, pair.name))
        exp = Experiment(run_dir=folder.path, resume=True, emit=emit) if folder.config.is_file() \
            else Experiment(cfg, run_dir=folder.path, emit=emit)
        if on_experiment is not None:
            on_experiment(exp)
        out.append(exp.run())
    return out


def _run_pairs_on(backend, configs, root: Path, emit) -> list[dict]:
    """Every pair's units as Ray tasks (:func:`app.sweep.run_units`); a pair folder keeps its own config."""
    from .sweep import run_units
    runs = []
    for pair, cfg in configs:
        folder = RunFolder(resolve(root, pair.name))
        saved = read_json(folder.config) if folder.config.is_file() else None
        runs.append((ExperimentConfig.from_dict(saved) if saved else cfg, folder.path))
    return run_units(backend, runs, emit=emit)


# ---------------------------------------------------------------- the report

def _pct(v) -> str:
    return "–" if v is None else f"{v * 100:.2f}"


def _interval(ci, signed: bool = False) -> str:
    if not ci:
        return "–"
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"[{f.format(ci[0] * 100)}, {f.format(ci[1] * 100)}]"


LOSS_NAMES = {"pkt_indistill": "PKT", "pkt": "PKT", "kd": "Hinton KD", "dkd": "DKD", "fitnets": "FitNets", "at": "AT",
              "rkd": "RKD"}


def arm_label(results: RunResults, phase: str) -> str:
    """``phase`` with what it trained, e.g. ``kd (PKT alone)`` under the reference procedure."""
    proc = results.get("procedure") or {}
    loss = proc.get("stage2_loss")
    if phase not in ("kd", "indistill") or not loss:
        return phase
    ce = loss == "kd" or (proc.get("stage2_params") or {}).get("ce", 1.0) > 0
    name = LOSS_NAMES.get(loss, loss) + (" + CE" if ce else "")
    return f"{phase} ({name} alone)" if phase == "kd" else f"{phase} (InDistill + {name})"


def arm_table(results: RunResults) -> tuple[list[str], list[list[str]]]:
    """Per phase: test accuracy mean ± sd, its 95 % interval and method (– where the arm trains no
    classifier), seeds; cosine mAP with its interval, its reference-code form, top-100 precision;
    Euclidean mAP."""
    head = ["phase", "test acc %", "± sd", "95 % interval", "interval", "seeds", "mAP cos %", "mAP 95 % interval",
            "mAP cos, reference form %", "P@100 cos %", "mAP Eucl. %", "epochs"]
    rows = []
    for phase, r in measured_phases(results):
        m = (r.get("retrieval") or {}).get("cosine") or {}
        e = (r.get("retrieval") or {}).get("euclidean") or {}
        acc = [_pct(r["test_acc"]), _pct(r.get("test_acc_std")), _interval(r.get("test_acc_ci")),
               r.get("test_acc_ci_method", "Wilson")] if render.has_accuracy(r) else \
            ["– (no classifier trained)", "–", "–", "–"]
        rows.append([arm_label(results, phase), *acc, str(len(r.get("test_acc_seeds") or [1])),
                     _pct(m.get("map")), _interval(m.get("map_ci")), _pct(m.get("map_reference")),
                     _pct(m.get("precision_at_100")), _pct(e.get("map")), f"{r.get('epochs', 0):g}"])
    return head, rows


def released_table(released: dict) -> tuple[list[str], list[list[str]]]:
    """The InDistill authors' released models measured here beside their published figures."""
    head = ["model (their file)", "test acc %", "mAP cos %", "95 % interval", "mAP cos, reference form %",
            "published mAP cos %", "gap (reference form − published)", "mAP Eucl. %", "Eucl. ref. form %",
            "published Eucl. %", "P@100 cos %", "published P@100 %"]
    rows = []
    for name, m in released.get("models", {}).items():
        c, e, pub = m["cosine"], m["euclidean"], m["published"]
        rows.append([f"{m['what']} ({name}.pt)",
                     _pct(m["test_acc"]) if m.get("classifier_trained", True) else "– (fc2 never trained)",
                     _pct(c["map"]), _interval(c.get("map_ci")), _pct(c["map_reference"]), f"{pub['map_cosine']:.2f}",
                     f"{c['map_reference'] * 100 - pub['map_cosine']:+.2f}", _pct(e["map"]), _pct(e["map_reference"]),
                     f"{pub['map_euclidean']:.2f}", _pct(c["precision_at_100"]), f"{pub['precision_at_100_cosine']:.2f}"])
    return head, rows


def difference_table(results: RunResults) -> tuple[list[str], list[list[str]]]:
    head = ["difference", "metric", "mean (points)", "95 % interval", "verdict", "method"]
    rows = [[f"{arm_label(results, c['b'])} − {arm_label(results, c['a'])}", c["metric"], f"{c['diff'] * 100:+.2f}",
             _interval(c.get("ci"), True),
             c["verdict"], c["method"]] for c in results.get("comparisons") or [] if c.get("diff") is not None]
    return head, rows


def cost_table(results: RunResults) -> tuple[list[str], list[list[str]]]:
    """Per architecture: params, FLOPs, CPU latency (median [IQR]) and its per-round ratio to the
    teacher's (median [IQR], when timed together); per phase: mean training seconds."""
    head = ["network", "params", "MFLOPs", "CPU ms (batch 1, median [IQR])", "× teacher (per round, median [IQR])",
            "train s per unit (phases)"]
    train = {}
    for phase, r in (results.get("phases") or {}).items():
        if "cost_key" in r:
            train.setdefault(r["cost_key"], []).append(f"{phase} {r.get('train_seconds', 0):.0f}")
    reference = (results.get("latency") or {}).get("reference")

    def ms(c: dict) -> str:
        sp = c.get("latency_ms_cpu_b1_spread")
        return f"{c.get('latency_ms_cpu_b1', 0):.3f}" + (f" [{sp['q1']:.3f}, {sp['q3']:.3f}]" if sp else "")
    rows = [[key, f"{c['params']:,}", f"{c['flops'] / 1e6:.2f}", ms(c),
             "1 (reference)" if key == reference else ratio_text(c.get("latency_ratio_cpu_b1")) or "–",
             ", ".join(train.get(key, []))] for key, c in (results.get("costs") or {}).items()]
    return head, rows


def grid_table(grid: dict) -> tuple[list[str], list[list[str]]]:
    """Per grid cell and control: warm-up + KD epochs, accuracy with its interval, and the paired
    difference to the no-warm-up control with its interval and verdict."""
    head = ["run", "a", "b", "warm-up + KD epochs", "test acc %", "95 % interval", "− no warm-up (points)",
            "95 % interval", "verdict"]
    vs = {(c["mode"], c["a"], c["b"]): c for c in grid.get("comparisons") or []}
    rows = []
    for c in grid.get("cells", []):
        d = vs.get((c["mode"], c["a"], c["b"]))
        off = c["mode"] == "off"
        rows.append([c["mode"], "–" if off else f"{c['a']:g}", "–" if off else f"{c['b']:g}",
                     f"{c['warmup_epochs']:g} + {c['kd_epochs']:g}", _pct(c["test_acc"]), _interval(c.get("test_acc_ci")),
                     f"{d['diff'] * 100:+.2f}" if d else "–", _interval(d["ci"], True) if d else "–",
                     d["verdict"] if d else ("the control" if off else "–")])
    return head, rows


def _md(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    cells = lambda tag, r: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in r)  # noqa: E731
    return ("<table><thead><tr>" + cells("th", head) + "</tr></thead><tbody>"
            + "".join("<tr>" + cells("td", r) + "</tr>" for r in rows) + "</tbody></table>")


def pair_figures(results: RunResults) -> list:
    """The information curves and the Fig. 2 / Fig. 4 analogues of one pair (plotly figures)."""
    snap = snapshot_from_results("report", results)
    return [render.info_flow_figure(snap, results), render.feature_mse_figure(snap), render.flow_divergence_figure(snap),
            render.scatter_figure(results)]


def csv_rows(pair: str, results: RunResults) -> list[dict]:
    """Long format: one row per unit, per phase aggregate, per paired difference. The accuracy of a
    classifier that was never trained (the reference's PKT arms) is left blank, as the views leave it."""
    rows = []
    for phase, entry in (results.get("phases") or {}).items():
        shown = render.has_accuracy(entry)
        for key, u in phase_units(phase, entry):
            ci = (u.get("test_acc_ci") or [None, None]) if shown else ["", ""]
            rows.append({"pair": pair, "row": "unit", "name": phase, "seed": key.slot, "metric": "test_acc",
                         "value": u.get("test_acc") if shown else "", "ci_low": ci[0], "ci_high": ci[1],
                         "n": u.get("test_images"), "verdict": "", "train_seconds": u.get("train_seconds")})
        if "test_acc" in entry:
            ci = (entry.get("test_acc_ci") or [None, None]) if shown else ["", ""]
            rows.append({"pair": pair, "row": "aggregate", "name": phase, "seed": "", "metric": "test_acc",
                         "value": entry["test_acc"] if shown else "", "ci_low": ci[0], "ci_high": ci[1],
                         "n": len(entry.get("test_acc_seeds") or [1]), "verdict": "",
                         "train_seconds": entry.get("train_seconds")})
    for c in results.get("comparisons") or []:
        ci = c.get("ci") or [None, None]
        rows.append({"pair": pair, "row": "comparison", "name": f"{c['b']} - {c['a']}", "seed": "",
                     "metric": c["metric"], "value": c.get("diff"), "ci_low": ci[0], "ci_high": ci[1],
                     "n": len(c.get("per_seed") or []), "verdict": c.get("verdict", ""), "train_seconds": ""})
    return rows


def grid_csv_rows(pair: str, grid: dict) -> list[dict]:
    vs = {(c["mode"], c["a"], c["b"]): c for c in grid.get("comparisons") or []}
    rows = []
    for c in grid.get("cells", []):
        ci, d = c.get("test_acc_ci") or [None, None], vs.get((c["mode"], c["a"], c["b"]))
        name = f"grid {c['mode']} a={c['a']:g} b={c['b']:g}"
        rows.append({"pair": pair, "row": "grid", "name": name, "seed": 0, "metric": "test_acc", "value": c["test_acc"],
                     "ci_low": ci[0], "ci_high": ci[1], "n": c.get("test_images"), "verdict": "", "train_seconds": ""})
        if d:
            rows.append({"pair": pair, "row": "grid comparison", "name": f"{name} - off", "seed": 0,
                         "metric": "test_acc", "value": d["diff"], "ci_low": d["ci"][0], "ci_high": d["ci"][1],
                         "n": c.get("test_images"), "verdict": d["verdict"], "train_seconds": ""})
    return rows


def _arms_section(results: RunResults, md: list, body: list) -> list:
    """The arms' tables (accuracy, paired differences, cost) and figure notes; returns the figures."""
    data = results.get("data", {})
    where = (f"Test accuracy on the {data.get('test_data', 'test split')}; trained on {data.get('train', 0):,} "
             f"images; device {results.get('device', '?')}.")
    md += [where, ""]
    body.append(f"<p>{html.escape(where)}</p>")
    for name, (head, table) in (("Accuracy and retrieval", arm_table(results)),
                                ("Paired differences (same seeds, same test images)", difference_table(results)),
                                ("Cost", cost_table(results))):
        md += [f"### {name}", "", _md(head, table), ""]
        body.append(f"<h3>{html.escape(name)}</h3>" + _html_table(head, table))
    timing = timing_note(results.get("latency"))
    timing = timing[:1].upper() + timing[1:] + "."
    md += [timing, ""]
    body.append(f"<p>{html.escape(timing.replace('**', ''))}</p>")
    ref = results.get("flow_reference")
    if ref:
        note = (f"Fig. 2 / Fig. 4 analogues: reference network {ref['network']}; information estimator "
                f"{ref['estimator']}; divergence {ref['divergence']}; on {ref['images']} images of the "
                f"{(results.get('data') or {}).get('eval_split', 'val')} split.")
        md += [note, ""]
        body.append(f"<p>{html.escape(note)}</p>")
    return pair_figures(results)


def _grid_section(grid: dict, status: str | None, md: list, body: list) -> list:
    """The grid's table (Fig. 5 analogue), marked when unfinished; returns its figures."""
    head, table = grid_table(grid)
    cells = len(grid.get("cells", []))
    partial = "" if status == "finished" else f" **Unfinished ({status}): {cells} runs recorded so far.**"
    note = (f"The a × b curriculum grid (Fig. 5 analogue): the InDistill+KD student alone, seed 0, every run "
            f"{grid['total_epochs']:g} student epochs in all (the warm-up Σ S_l comes out of them, KD gets the "
            f"rest), one shared teacher; the joint control runs the same warm-up without the curriculum, the "
            f"no-warm-up control KD only. Differences are paired on the same test images (McNemar-style interval).")
    md += ["### Curriculum grid (Fig. 5 analogue)", "", note + partial, "", _md(head, table), ""]
    body.append("<h3>Curriculum grid (Fig. 5 analogue)</h3>" + f"<p>{html.escape(note + partial.replace('**', ''))}</p>"
                + _html_table(head, table))
    return list(render.grid_figures(grid))


def write_report(s: Study, root: Path) -> dict[str, Path]:
    """report.md, report.html and report.csv in ``root`` from its pairs' results.json."""
    md = [f"# Study `{s.name}`", "", s.summary, ""]
    body = [f"<h1>Study {html.escape(s.name)}</h1><p>{html.escape(s.summary)}</p>"]
    rows: list[dict] = []
    first_fig = True
    for pair in s.pairs:
        results = RunFolder(resolve(root, pair.name)).read_results() or {}
        title = f"{pair.name}: {pair.summary}"
        md += [f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        figures = []
        partial = results.get("status") != "finished" and any(
            e.get("units") for p, e in (results.get("phases") or {}).items() if p in ARMS)
        if partial:
            results = partial_results(resolve(root, pair.name))
            seeds = {p: len(e.get("units", {})) for p, e in results["phases"].items() if p in ARMS}
            note = (f"**Unfinished ({results.get('status')}): units recorded so far per arm: "
                    + ", ".join(f"{p} {n}" for p, n in seeds.items())
                    + f" of {results['config']['seeds']} seeds; the figures below are over those seeds.**")
            md += [note, ""]
            body.append(f"<p><b>{html.escape(note.replace('**', ''))}</b></p>")
        if results.get("status") != "finished" and not partial:
            md += ["Arms not run (or not finished): no results.", ""]
            body.append("<p>Arms not run (or not finished): no results.</p>")
        else:
            figures = _arms_section(results, md, body)
            rows += csv_rows(pair.name, results)
        grid_results = (RunFolder(resolve(root, f"{pair.name}-grid")).read_results() or {}) if pair.grid else {}
        grid = grid_results.get("grid") or {}
        if grid.get("cells"):
            figures += _grid_section(grid, grid_results.get("status"), md, body)
            rows += grid_csv_rows(pair.name, grid)
        if figures:
            shown = (["information per layer, Fig. 2 and Fig. 4 analogues, accuracy vs cost"] if results.get("status")
                     == "finished" or partial else []) + (["the grid's heatmap"] if grid.get("cells") else [])
            md += [f"Figures ({', '.join(shown)}): report.html", ""]
        for fig in figures:
            body.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first_fig else False))
            first_fig = False
    released = read_json(root / "released.json") if s.released and (root / "released.json").is_file() else None
    if released:
        head, table = released_table(released)
        note = (f"The InDistill authors' released models (their files, imported with `python -m app.cli "
                f"import-reference`), measured here by the reference's protocol on the {released['data']}: "
                f"{released['queries']:,} test queries against the {released['database']:,} training images, "
                "unaugmented, relu(fc1); published figures are theirs, on original CIFAR-10. Not evaluated: "
                + "; ".join(f"{k}.pt ({v})" for k, v in released.get("not_evaluated", {}).items()) + ".")
        md += ["## The authors' released models", "", note, "", _md(head, table), ""]
        body.append("<h2>The authors' released models</h2>" + f"<p>{html.escape(note)}</p>" + _html_table(head, table))
    paths = {"md": root / "report.md", "html": root / "report.html", "csv": root / "report.csv"}
    paths["md"].write_text("\n".join(md))
    style = "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Study {html.escape(s.name)}"
                             f"</title>{style}</head><body>{''.join(body)}</body></html>")
    buf = io.StringIO()
    fields = ["pair", "row", "name", "seed", "metric", "value", "ci_low", "ci_high", "n", "verdict", "train_seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    paths["csv"].write_text(buf.getvalue())
    write_json({"study": s.name, "pairs": [p.name for p in s.pairs]}, root / "study.json")
    return paths
