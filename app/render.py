"""What the report and the page both draw, from a run's results and snapshot
(:mod:`app.results`): plotly figures, markdown and table rows. No Gradio and nothing of
``app.ui`` here, so the engine's report (:mod:`app.report`) and the page share one renderer."""
from __future__ import annotations

import csv
import io
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.profile import ratio_text, timing_note
from app.results import (PHASES, STUDENT_PHASES, PhaseResults, RunResults, Snapshot, UnitKey, measured_phases,
                         units)

LABELS = {"teacher": "Teacher", "aux": "Auxiliary teacher", "baseline": "Baseline (CE)", "kd": "KD",
          "indistill": "InDistill + KD"}
COLORS = {"teacher": "#6b7280", "aux": "#a855f7", "baseline": "#f59e0b", "kd": "#3b82f6", "indistill": "#10b981"}
KIND_COLORS = {"layer": "#a7f3d0", "embed": "#fde68a", "joint": "#c7d2fe", "kd": "#bfdbfe", "ce": "#fed7aa"}


def empty_figure(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", height=320,
                      annotations=[dict(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                                        font=dict(size=14, color="#6b7280"))],
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig



def _reopened(snap: Snapshot | None) -> bool:
    """An ended run read from disk or the library (no live job): its per-step curves are gone (runs
    recorded since per-epoch losses were kept show those instead)."""
    return bool(snap) and snap.get("read_only") and snap.get("state") not in ("queued", "running") \
        and not snap.get("series")


def _no_curves(snap: Snapshot | None, title: str, kept_none: str, not_yet: str) -> go.Figure:
    """The empty chart of a run without these curves: an ended run that kept none, or one before its first."""
    return empty_figure(title, kept_none if _reopened(snap) else not_yet)


def loss_figure(snap: Snapshot | None) -> go.Figure:
    """Loss by component, one panel per phase unit, curriculum segments shaded and labelled."""
    series = (snap or {}).get("series", {})
    keys = [k for k in series if series[k]["step"]]
    if not keys:
        return _no_curves(snap, "Losses", "this run was recorded without its training losses (per-step losses live "
                                          "only while a run trains); its per-epoch curves are in the chart beside",
                          "losses appear here as soon as training starts")
    keys = keys[-4:]
    fig = make_subplots(rows=len(keys), cols=1, subplot_titles=[_unit_title(k) for k in keys], vertical_spacing=0.08)
    palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#be185d"]
    shapes, labels = [], list(fig.layout.annotations)   # the subplot titles
    for r, key in enumerate(keys, 1):
        s = series[key]
        for i, (name, values) in enumerate(sorted(s["losses"].items(), key=lambda kv: kv[0] != "total")):
            fig.add_trace(go.Scatter(x=s["epoch"], y=values, mode="lines" if len(values) > 12 else "lines+markers",
                                     name=name, legendgroup=name,
                                     showlegend=r == 1 or name not in _names_in(series, keys[:r - 1]),
                                     line=dict(width=3 if name == "total" else 1.5, color=palette[i % len(palette)])),
                          row=r, col=1)
        spans, names = _segment_spans(snap, key, r)
        shapes += spans
        labels += names
        fig.update_yaxes(type="log", row=r, col=1)
    fig.update_xaxes(title_text="epoch", row=len(keys), col=1)
    fig.update_layout(template="plotly_white", height=230 * len(keys) + 60, uirevision="losses",
                      margin=dict(l=10, r=10, t=40, b=40), shapes=shapes, annotations=labels)
    return fig


def _names_in(series: dict, keys: list[str]) -> set[str]:
    return {n for k in keys for n in series[k]["losses"]}


def _unit_title(key: str) -> str:
    unit = UnitKey.from_series(key)
    return LABELS.get(unit.phase, unit.phase) + (f" — seed {unit.label_seed}" if unit.phase in STUDENT_PHASES else "")


def _segment_spans(snap: Snapshot, key: str, row: int) -> tuple[list[dict], list[dict]]:
    """The unit's schedule segments as shaded spans and labels of its panel (plain dicts, set on the
    figure once: ``add_vrect`` per segment made most of a redraw's cost)."""
    schedule = snap.get("schedules", {}).get(key, [])
    if len(schedule) < 2:
        return [], []
    x, y = ("x", "y") if row == 1 else (f"x{row}", f"y{row}")
    shapes, labels, start = [], [], 0.0
    for ph in schedule:
        shapes.append(dict(type="rect", xref=x, yref=f"{y} domain", x0=start, x1=start + ph["epochs"], y0=0, y1=1,
                           fillcolor=KIND_COLORS.get(ph["kind"], "#eee"), opacity=0.35, line_width=0, layer="below"))
        labels.append(dict(x=start, y=1, xref=x, yref=f"{y} domain", text=ph["name"], showarrow=False,
                           xanchor="left", yanchor="top", font=dict(size=10)))
        start += ph["epochs"]
    return shapes, labels


def accuracy_figure(snap: Snapshot | None) -> go.Figure:
    ev = (snap or {}).get("eval", {})
    keys = [k for k in ev if ev[k]["epoch"]]
    if not keys:
        return _no_curves(snap, "Accuracy per epoch", "this run kept no per-epoch curves (a curriculum grid's are in "
                                                      "the Information flow tab)",
                          "evaluation accuracy appears after the first epoch")
    fig = go.Figure()
    data = (snap or {}).get("data") or {}
    name = {"val": "validation split (held out of training)", "test": "test split (no validation split set)",
            "train-probe": "fixed probe of training images (seen in training; no validation split set)"}
    split = name.get(data.get("eval_split", "test"), data.get("eval_split", "test")) + (
        f", {data['eval_images']:,} images" if data.get("eval_images") else "")
    maps = False
    for key in keys:
        unit = UnitKey.from_series(key)
        values, label = ev[key]["acc"], _unit_title(key)
        if all(a is None for a in values) and any(m is not None for m in ev[key].get("map", [])):
            values, label, maps = ev[key]["map"], label + " · mAP (no classifier)", True  # a unit without a classifier
        fig.add_trace(go.Scatter(x=ev[key]["epoch"], y=[None if a is None else a * 100 for a in values],
                                 mode="lines+markers", name=label,
                                 line=dict(color=COLORS.get(unit.phase), dash="dot" if unit.seed != 0 else None)))
    what = "Accuracy or, for units without a classifier, retrieval mAP" if maps else "Accuracy"
    fig.update_layout(template="plotly_white", height=340, title=f"{what} per epoch (%), {split}", xaxis_title="epoch",
                      yaxis_title="accuracy / mAP %" if maps else "accuracy %", uirevision="acc",
                      margin=dict(l=10, r=10, t=40, b=40))
    return fig


# ---------------------------------------------------------------- Pruning

def channel_figure(maps: dict | None) -> go.Figure:
    """Per stage: every channel's filter L1 norm, sorted; kept vs pruned in two colours."""
    if not maps:
        return empty_figure("Channel pruning", "the channel maps appear once the teacher (or auxiliary teacher) is ready")
    stages = maps["stages"]
    titles = [f"layer {s['stage'] + 1}: kept {len(s['kept'])}/{s['teacher_channels']} "
              f"({len(s['kept']) / s['teacher_channels'] * 100:.0f}%)" for s in stages]
    fig = make_subplots(rows=1, cols=len(stages), subplot_titles=titles)
    for c, s in enumerate(stages, 1):
        kept = set(s["kept"])
        order = sorted(range(len(s["norms"])), key=lambda i: -s["norms"][i])
        fig.add_trace(go.Bar(x=list(range(len(order))), y=[s["norms"][i] for i in order],
                             marker_color=["#10b981" if i in kept else "#d1d5db" for i in order],
                             customdata=order, hovertemplate="channel %{customdata}: L1 %{y:.3f}<extra></extra>",
                             showlegend=False), row=1, col=c)
        fig.update_xaxes(title_text="channels, sorted", row=1, col=c)
    fig.update_yaxes(title_text="filter L1 norm", row=1, col=1)
    fig.update_layout(template="plotly_white", height=330, bargap=0.05, margin=dict(l=10, r=10, t=60, b=40),
                      title=f"Pruning {maps['pruned_arch']}: green = kept, grey = pruned")
    return fig


# ---------------------------------------------------------------- Compare

def _fmt_pm(mean: float | None, sd: float | None, scale: float = 100.0) -> str:
    if mean is None:
        return "–"
    return f"{mean * scale:.2f}" + (f" ± {sd * scale:.2f}" if sd else "")


def _fmt_ci(mean: float | None, ci: list | None, sd: float | None = None, scale: float = 100.0) -> str:
    """'57.60 [54.5, 60.6]' (one seed) or '57.87 ± 0.55 [56.5, 59.2]' (seeds: mean ± sd [t-interval])."""
    text = _fmt_pm(mean, sd, scale)
    return text + (f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if mean is not None and ci else "")


def _latency(r: PhaseResults, key: str = "latency_ms_cpu_b1", busy: bool = False) -> str:
    if key not in r:
        return "–"
    sp = r.get(key + "_spread")
    return f"{r[key]:.3f}" + (f" [{sp['q1']:.3f}–{sp['q3']:.3f}]" if sp else "") + (" (busy)" if busy else "")


def _ratio(r: PhaseResults, reference: str | None) -> str:
    """The per-round latency ratio to the teacher, '×median [q1, q3]'; '1 (reference)' for the
    teacher's architecture; '–' for a run recorded before architectures were timed together."""
    text = ratio_text(r.get("latency_ratio_cpu_b1"))
    return "–" if not text else "1 (reference)" if r.get("cost_key") == reference else "×" + text


COMPARE_HEADERS = ["model", "arch", "accuracy % [95% CI]", "mAP cos % [95% CI]", "mAP euc % [95% CI]",
                   "mAP cos % (ref.-compatible)", "params", "size MB", "MFLOPs", "CPU ms b1 (median [IQR])",
                   "CPU × teacher (median [IQR])", "GPU ms (b1)", "img/s (b256)", "train s"]
COMPARE_WIDTHS = ["8%", "8%", "10%", "10%", "10%", "7%", "7%", "5%", "5%", "8%", "7%", "5%", "5%", "5%"]
NAMES = {("baseline", "kd"): "KD − baseline", ("kd", "indistill"): "InDistill+KD − KD"}
METRIC_NAMES = {"test_acc": "accuracy", "map_cosine": "mAP (cosine)", "map_euclidean": "mAP (Euclidean)"}


def measured_on(results: RunResults | None) -> str:
    """The data test accuracies were measured on, e.g. 'test split, 1,000 images (…)'; '' for older runs."""
    return ((results or {}).get("data") or {}).get("test_data", "")


def difference_lines(results: RunResults | None) -> list[str]:
    """One line per paired difference: 'KD − baseline, accuracy: +1.70 points [−0.7, +4.1] — within noise (…)'."""
    lines = []
    for c in (results or {}).get("comparisons") or []:
        name = NAMES.get((c["a"], c["b"]), f"{c['b']} − {c['a']}")
        what = METRIC_NAMES.get(c["metric"], c["metric"])
        if c.get("diff") is None:
            continue
        ci = f" [{c['ci'][0] * 100:+.1f}, {c['ci'][1] * 100:+.1f}]" if c.get("ci") else ""
        lines.append(f"{name}, {what}: {c['diff'] * 100:+.2f} points{ci} — **{c['verdict']}** ({c['method']})")
    return lines


def compare_note(results: RunResults | None) -> str:
    """Which data the figures come from, how to read the intervals, and the paired differences."""
    where = measured_on(results)
    if not where:
        return ""
    note = (f"Accuracy on the {where}, every model on the same images; retrieval queries are those test images, "
            f"the database the {results['data']['train']:,} training images. Brackets are 95 % intervals "
            "(Wilson for one seed's accuracy, a bootstrap over queries for one seed's mAP, a t-interval over "
            f"seeds); {timing_note((results or {}).get('latency'))}.")
    diffs = difference_lines(results)
    reuse = reuse_note(results)
    return note + ("\n\n" + "  \n".join(diffs) if diffs else "") + ("\n\n" + reuse if reuse else "")


def reused_units(results: RunResults | None) -> list[tuple[UnitKey, dict]]:
    """The units this run took from the unit store (trained earlier with the same settings), with
    where they came from (``reused_from``: run and unit)."""
    return [(key, u["reused_from"]) for key, u in units(results or {}) if isinstance(u.get("reused_from"), dict)]


def reuse_note(results: RunResults | None) -> str:
    """One line naming each reused unit and its run, or "" when every unit trained here."""
    reused = reused_units(results)
    if not reused:
        return ""
    named = ", ".join(f"{key.name} (from run `{src.get('run', '?')}`)" for key, src in reused)
    return (f"Reused, not retrained: {named} — trained earlier on this server with exactly the settings these "
            "units read (same data, networks, schedule, loss, seed, precision and engine), so their figures are "
            "the same as a retrained unit's on this CPU.")


def has_accuracy(r: PhaseResults) -> bool:
    """Whether a phase's accuracy means something: the reference's PKT arms never train their
    classifier (no cross-entropy, PKT on the embedding), so theirs is chance."""
    return "test_acc" in r and r.get("classifier_trained", True)


def compare_rows(results: RunResults | None) -> list[list]:
    timed = (results or {}).get("latency") or {}
    busy = bool((timed.get("cpu") or {}).get("busy"))
    rows = []
    for p, r in measured_phases(results):
        ret = r.get("retrieval", {})
        cos, euc = ret.get("cosine", {}), ret.get("euclidean", {})
        acc = _fmt_ci(r["test_acc"], r.get("test_acc_ci"), r.get("test_acc_std")) if has_accuracy(r) \
            else "— (no classifier trained)"
        rows.append([LABELS[p], r.get("arch", ""), acc,
                     _fmt_ci(cos.get("map"), cos.get("map_ci"), cos.get("map_std")),
                     _fmt_ci(euc.get("map"), euc.get("map_ci"), euc.get("map_std")),
                     _fmt_pm(cos.get("map_reference"), None),
                     f"{r['params']:,}" if "params" in r else "–", f"{r['size_mb']:.3f}" if "size_mb" in r else "–",
                     f"{r['flops'] / 1e6:.2f}" if "flops" in r else "–",
                     _latency(r, busy=busy), _ratio(r, timed.get("reference")), _latency(r, "latency_ms_gpu_b1"),
                     f"{r['throughput_b256']:,.0f}" if "throughput_b256" in r else "–", f"{r['train_seconds']:.1f}"])
    return rows


RESULTS_CSV_PHASE = ["phase", "arch", "test_acc", "test_acc_std", "test_acc_ci_low", "test_acc_ci_high",
                     "test_acc_seeds", "map_cosine", "map_cosine_ci_low", "map_cosine_ci_high", "map_euclidean",
                     "map_cosine_reference", "params", "size_mb", "flops", "latency_ms_cpu_b1", "latency_ms_cpu_b1_q1",
                     "latency_ms_cpu_b1_q3", "latency_ms_gpu_b1", "throughput_b256", "train_seconds"]
RESULTS_CSV_COMPARISON = ["comparison", "metric", "diff", "diff_ci_low", "diff_ci_high", "diff_per_seed", "verdict",
                          "method"]


def results_csv(results: RunResults) -> str:
    """One header for both kinds of row: a phase row fills the phase columns, a paired
    difference (``comparison`` = "b - a") the comparison columns; the others stay empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULTS_CSV_PHASE + RESULTS_CSV_COMPARISON, restval="")
    w.writeheader()
    for p, r in measured_phases(results):
        ret = r.get("retrieval", {})
        cos = ret.get("cosine", {})
        ci, mci = r.get("test_acc_ci") or ["", ""], cos.get("map_ci") or ["", ""]
        sp = r.get("latency_ms_cpu_b1_spread") or {}
        acc, std = r["test_acc"], r.get("test_acc_std", "")
        seeds = " ".join(f"{a:.4f}" for a in r.get("test_acc_seeds", [acc]))
        if not has_accuracy(r):  # an untrained classifier's accuracy is chance: left blank, as on the page
            acc = std = seeds = ""
            ci = ["", ""]
        w.writerow(dict(zip(RESULTS_CSV_PHASE, [
            p, r.get("arch"), acc, std, ci[0], ci[1], seeds,
            cos.get("map", ""), mci[0], mci[1], ret.get("euclidean", {}).get("map", ""),
            cos.get("map_reference", ""), r["params"], r["size_mb"], r["flops"], r["latency_ms_cpu_b1"],
            sp.get("q1", ""), sp.get("q3", ""), r.get("latency_ms_gpu_b1", ""),
            r["throughput_b256"], r["train_seconds"]])))
    for c in results.get("comparisons") or []:
        ci = c.get("ci") or ["", ""]
        w.writerow(dict(zip(RESULTS_CSV_COMPARISON, [
            f"{c['b']} - {c['a']}", c["metric"], c.get("diff", ""), ci[0], ci[1],
            " ".join(f"{d:.4f}" for d in c.get("per_seed", [])), c.get("verdict", ""), c.get("method", "")])))
    return buf.getvalue()


def _err(value: float, ci: list | None, scale: float = 100.0) -> dict | None:
    if not ci:
        return None
    return dict(type="data", symmetric=False, array=[(ci[1] - value) * scale], arrayminus=[(value - ci[0]) * scale],
                thickness=1.5, width=4)


def scatter_figure(results: RunResults | None) -> go.Figure:
    """Accuracy (95 % interval as a vertical bar) vs CPU latency (interquartile range as a
    horizontal bar); models of one architecture share one latency figure."""
    pts = [(p, r) for p, r in measured_phases(results) if has_accuracy(r)]
    if not pts:
        return empty_figure("Accuracy vs latency", "results appear when phases finish")
    fig = go.Figure()
    biggest = max(r["size_mb"] for _, r in pts) or 1.0
    for p, r in pts:
        sp = r.get("latency_ms_cpu_b1_spread")
        x = r["latency_ms_cpu_b1"]
        ci = r.get("test_acc_ci")
        ci_text = f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else ""
        fig.add_trace(go.Scatter(
            x=[x], y=[r["test_acc"] * 100], mode="markers+text", name=LABELS[p],
            text=[LABELS[p]], textposition="top center",
            error_y=_err(r["test_acc"], ci),
            error_x=dict(type="data", symmetric=False, array=[sp["q3"] - x], arrayminus=[x - sp["q1"]], thickness=1,
                         width=3) if sp else None,
            marker=dict(size=14 + 46 * math.sqrt(r["size_mb"] / biggest), color=COLORS[p], opacity=0.75,
                        line=dict(width=1, color="#111827")),
            hovertemplate=f"{LABELS[p]}<br>%{{y:.2f}}%{ci_text} · %{{x:.3f}} ms · {r['size_mb']:.3f} MB<extra></extra>"))
    where = measured_on(results)
    fig.update_layout(template="plotly_white", height=380, title="Accuracy (95% interval) vs CPU latency (IQR); "
                      "bubble area ∝ size" + (f"<br><sup>accuracy on the {where}</sup>" if where else ""),
                      xaxis_title="CPU latency, batch 1 (ms), one figure per architecture",
                      yaxis_title="test accuracy %", showlegend=False, margin=dict(l=10, r=10, t=50, b=40))
    return fig


# ---------------------------------------------------------------- Retrieval

def pr_figure(results: RunResults | None, metric: str = "cosine") -> go.Figure:
    phases = (results or {}).get("phases", {})
    fig = go.Figure()
    for p in PHASES:
        r = phases.get(p, {}).get("retrieval", {}).get(metric)
        if r:
            fig.add_trace(go.Scatter(x=r["pr_curve"]["recall"], y=r["pr_curve"]["precision"], mode="lines+markers",
                                     name=f"{LABELS[p]} (mAP {_fmt_ci(r['map'], r.get('map_ci'))}"
                                     + (f"; ref.-compatible {r['map_reference'] * 100:.1f}" if "map_reference" in r
                                        else "") + ")", line=dict(color=COLORS[p])))
    if not fig.data:
        return empty_figure("Precision–recall", "retrieval curves appear when phases finish")
    fig.update_layout(template="plotly_white", height=360, title=f"Test-set retrieval, {metric} distance",
                      xaxis_title="recall", yaxis_title="interpolated precision", yaxis_range=[0, 1.02],
                      margin=dict(l=10, r=10, t=40, b=40))
    return fig


# ---------------------------------------------------------------- Information flow

def _teacher_flow(snap: Snapshot | None, results: RunResults | None) -> list[float] | None:
    """The teacher's per-layer information, from results.json or else the live snapshot."""
    phases = (results or {}).get("phases") or (snap or {}).get("results") or {}
    return phases.get("teacher", {}).get("info_flow")


def info_flow_figure(snap: Snapshot | None, results: RunResults | None = None) -> go.Figure:
    """Per-layer information I(layer; labels) over epochs for each student, and the teacher's."""
    ev = (snap or {}).get("eval", {})
    keys = [k for k in ev if any(f for f in ev[k]["info_flow"]) and UnitKey.from_series(k).seed == 0
            and UnitKey.from_series(k).phase in STUDENT_PHASES]
    if not keys:
        return empty_figure("Information flow", "per-layer information appears after the first student epoch")
    n_layers = len(next(f for f in ev[keys[0]]["info_flow"] if f))
    titles = [f"layer {i + 1}" if i < n_layers - 1 else "embedding" for i in range(n_layers)]
    fig = make_subplots(rows=1, cols=n_layers, subplot_titles=titles, shared_yaxes=True)
    t_flow = _teacher_flow(snap, results)
    for key in keys:
        phase = UnitKey.from_series(key).phase
        flows = ev[key]["info_flow"]
        for c in range(n_layers):
            fig.add_trace(go.Scatter(x=ev[key]["epoch"], y=[f[c] if f else None for f in flows], mode="lines+markers",
                                     name=LABELS[phase], legendgroup=phase, showlegend=c == 0,
                                     line=dict(color=COLORS[phase])), row=1, col=c + 1)
    if t_flow and len(t_flow) >= 1:
        for c in range(n_layers):
            t_idx = round(c * (len(t_flow) - 1) / max(n_layers - 1, 1))
            label = {"annotation_text": "teacher", "annotation_position": "top left"} if c == 0 else {}
            fig.add_hline(y=t_flow[t_idx], line_dash="dash", line_color=COLORS["teacher"], row=1, col=c + 1, **label)
    fig.update_yaxes(title_text="I(layer; label), bits", row=1, col=1)
    fig.update_layout(template="plotly_white", height=360, uirevision="info", margin=dict(l=10, r=10, t=60, b=40),
                      title="Information flow: kernel MI estimate per layer, on a fixed batch of the "
                      + (((snap or {}).get("data") or {}).get("eval_split") or "evaluation") + " split")
    return fig


def divergence_rows(snap: Snapshot | None, results: RunResults | None = None) -> list[list]:
    """Mean |I_student − I_teacher| over layers at each student's last epoch (lower = closer flow)."""
    ev = (snap or {}).get("eval", {})
    t_flow = _teacher_flow(snap, results)
    rows = []
    if not t_flow:
        return rows
    for key, r in ev.items():
        unit = UnitKey.from_series(key)
        flows = [f for f in r["info_flow"] if f]
        if unit.phase not in STUDENT_PHASES or not flows:
            continue
        last = flows[-1]
        n = len(last)
        idx = [round(c * (len(t_flow) - 1) / max(n - 1, 1)) for c in range(n)]
        div = sum(abs(last[c] - t_flow[i]) for c, i in enumerate(idx)) / n
        rows.append([LABELS[unit.phase], unit.label_seed, f"{div:.4f}"])
    return rows


PAPER_ARMS = ("kd", "indistill")   # the two students the paper's Fig. 2 and Fig. 4 compare


def _seed_mean(evals: dict, phase: str, field: str) -> tuple[list, list, int]:
    """Epochs and the per-epoch mean over seeds of ``field`` (a number or a per-layer list) for
    ``phase``; epochs where no seed has the field are left out. Returns (epochs, values, seeds)."""
    runs = [r for k, r in evals.items()
            if UnitKey.from_series(k).phase == phase and any(v is not None for v in r.get(field, []))]
    if not runs:
        return [], [], 0
    by_epoch: dict = {}
    for r in runs:
        for epoch, v in zip(r["epoch"], r[field]):
            if v is not None:
                by_epoch.setdefault(epoch, []).append(v)
    epochs = sorted(by_epoch)
    mean = [([sum(c) / len(c) for c in zip(*by_epoch[e])] if isinstance(by_epoch[e][0], list)
             else sum(by_epoch[e]) / len(by_epoch[e])) for e in epochs]
    return epochs, mean, len(runs)


def _reference_name(snap: Snapshot | None) -> str:
    return ((snap or {}).get("flow_reference") or {}).get("network", "the pruned teacher").split(",")[0]


def feature_mse_figure(snap: Snapshot | None) -> go.Figure:
    """InDistill's Fig. 2 analogue: per layer, over epochs, the MSE between the student's stage
    output and the pruned network's kept channels on a fixed validation batch, KD vs InDistill+KD
    (mean over the seeds recorded)."""
    evals = (snap or {}).get("eval", {})
    arms = {p: _seed_mean(evals, p, "feature_mse") for p in PAPER_ARMS}
    arms = {p: a for p, a in arms.items() if a[0]}
    title = "Feature-map MSE to the pruned teacher, per layer (the paper's Fig. 2)"
    if not arms:
        return empty_figure(title, "appears after the first student epoch of a run with InDistill enabled")
    n = len(next(iter(arms.values()))[1][0])
    fig = make_subplots(rows=1, cols=n, subplot_titles=[f"layer {i + 1}" for i in range(n)])
    for phase, (epochs, values, seeds) in arms.items():
        for c in range(n):
            fig.add_trace(go.Scatter(x=epochs, y=[v[c] for v in values], mode="lines+markers", legendgroup=phase,
                                     name=f"{LABELS[phase]} ({seeds} seed{'s' * (seeds > 1)})", showlegend=c == 0,
                                     line=dict(color=COLORS[phase])), row=1, col=c + 1)
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="MSE (log)", row=1, col=1)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template="plotly_white", height=340, uirevision="fmse", margin=dict(l=10, r=10, t=70, b=40),
                      title=f"{title}<br><sup>student stage vs the kept channels of {_reference_name(snap)}, on the "
                            "fixed information batch; mean over seeds</sup>")
    return fig


def flow_divergence_figure(snap: Snapshot | None) -> go.Figure:
    """The paper's Fig. 4 analogue: teacher–student information-flow divergence per epoch
    (Passalis et al. 2020), KD vs InDistill+KD, mean over the seeds recorded."""
    evals = (snap or {}).get("eval", {})
    title = "Information-flow divergence from the pruned teacher (the paper's Fig. 4)"
    arms = {p: _seed_mean(evals, p, "flow_divergence") for p in PAPER_ARMS}
    arms = {p: a for p, a in arms.items() if a[0]}
    if not arms:
        return empty_figure(title, "appears after the first student epoch of a run with InDistill and information flow on")
    fig = go.Figure([go.Scatter(x=e, y=v, mode="lines+markers", name=f"{LABELS[p]} ({n} seed{'s' * (n > 1)})",
                                line=dict(color=COLORS[p])) for p, (e, v, n) in arms.items()])
    fig.update_layout(template="plotly_white", height=340, uirevision="fdiv", margin=dict(l=10, r=10, t=70, b=40),
                      xaxis_title="epoch", yaxis_title="Σ_layers (I_teacher − I_student)², bits²",
                      title=f"{title}<br><sup>Passalis et al. 2020's divergence; information estimated with the "
                            "matrix-based Rényi α=2 entropy (an analogue of their quadratic MI); mean over seeds</sup>")
    return fig


# ---------------------------------------------------------------- curriculum grid (Fig. 5) and Fig. 4

def grid_figures(grid: dict | None) -> tuple[go.Figure, go.Figure]:
    """Heatmap of InDistill accuracy over (a, b), and per-layer information with vs without curriculum."""
    cells = (grid or {}).get("cells", [])
    cur = [c for c in cells if c["mode"] == "curriculum"]
    if not cur:
        note = "run the grid to fill this in"
        return empty_figure("Accuracy over the a × b grid", note), empty_figure("With vs without curriculum", note)
    a_vals, b_vals = grid["a"], grid["b"]
    z = [[next((c["test_acc"] * 100 for c in cur if c["a"] == a and c["b"] == b), None) for a in a_vals] for b in b_vals]
    half = {(c["a"], c["b"]): (c["test_acc_ci"][1] - c["test_acc_ci"][0]) * 50 for c in cur if c.get("test_acc_ci")}
    vs = {(c["a"], c["b"]): f"{c['diff'] * 100:+.1f} points vs no warm-up [{c['ci'][0] * 100:+.1f}, "
                            f"{c['ci'][1] * 100:+.1f}]: {c['verdict']}"
          for c in grid.get("comparisons", []) if c["mode"] == "curriculum"}
    heat = go.Figure(go.Heatmap(z=z, x=[f"a={a:g}" for a in a_vals], y=[f"b={b:g}" for b in b_vals],
                                colorscale="Viridis",
                                text=[[(f"{v:.1f}" + (f" ±{half[(a, b)]:.1f}" if (a, b) in half else ""))
                                       if v is not None else "" for a, v in zip(a_vals, row)] for b, row in zip(b_vals, z)],
                                texttemplate="%{text}", colorbar=dict(title="acc %"),
                                hovertext=[[vs.get((a, b), "") for a in a_vals] for b in b_vals],
                                hovertemplate="%{x} %{y}: %{z:.1f}%<br>%{hovertext}<extra></extra>"))
    joint = next((c for c in cells if c["mode"] == "joint"), None)
    off = next((c for c in cells if c["mode"] == "off"), None)
    controls = [f"{name}: {c['test_acc'] * 100:.1f}%" + (f" [{c['test_acc_ci'][0] * 100:.1f}, "
                                                           f"{c['test_acc_ci'][1] * 100:.1f}]" if c.get("test_acc_ci") else "")
                for name, c in (("joint, no curriculum", joint), ("no warm-up", off)) if c]
    total = grid.get("total_epochs")
    title = "InDistill accuracy over the curriculum grid" + (f", {total:g} epochs per run" if total else "") + (
        f"<br><sup>{'; '.join(controls)}</sup>" if controls else "")
    heat.update_layout(template="plotly_white", height=380, title=title, margin=dict(l=10, r=10, t=70, b=40))
    first = cur[0]
    pair = [("curriculum", first)] + ([("joint", joint)] if joint else [])
    flows = [f for f in first["info_flow"] if f]
    if not flows:
        return heat, empty_figure("With vs without curriculum", "no information-flow data (eval.info_flow off)")
    n = len(flows[0])
    fig = make_subplots(rows=1, cols=n, subplot_titles=[f"layer {i + 1}" if i < n - 1 else "embedding" for i in range(n)])
    for name, cell in pair:
        for c in range(n):
            fig.add_trace(go.Scatter(x=cell["epochs"], y=[f[c] if f else None for f in cell["info_flow"]],
                                     name=f"{name} (a={cell['a']:g}, b={cell['b']:g})" if name == "curriculum" else name,
                                     legendgroup=name, showlegend=c == 0, mode="lines+markers",
                                     line=dict(color="#10b981" if name == "curriculum" else "#6366f1")), row=1, col=c + 1)
    fig.update_layout(template="plotly_white", height=340, margin=dict(l=10, r=10, t=60, b=40),
                      title="Information per layer during training, with vs without the curriculum")
    return heat, fig
