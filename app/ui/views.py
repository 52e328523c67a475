"""What the page shows that the report does not: the Setup tab's cards and verdict, the
schedule, the status line and the feature-map gallery; the figures and tables the report shares
come from :mod:`app.render` (re-exported here for the page's handlers). No Gradio here, so each
view is unit-testable."""
from __future__ import annotations

import functools
import html
import io
import json

import plotly.graph_objects as go

from app.config import ASSETS
from app.pairing import spec_of
from app.plan import Plan
from app import render
from app.profile import flops as count_flops, param_count, size_mb
from app.render import (COLORS, COMPARE_HEADERS, COMPARE_WIDTHS, KIND_COLORS, LABELS, PHASES,  # noqa: F401
                        accuracy_figure, channel_figure, compare_note, compare_rows, divergence_rows, empty_figure,
                        feature_mse_figure, flow_divergence_figure, grid_figures, has_accuracy, info_flow_figure,
                        loss_figure, pr_figure, results_csv, scatter_figure)
from app.results import Snapshot, last_step
from models import MODELS, build_model


# ---------------------------------------------------------------- Setup

_CARDS: dict[str, str] = {}


@functools.lru_cache(maxsize=1)
def _manifest() -> dict:
    try:
        return json.loads((ASSETS / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def shipped_by_arch() -> dict[str, list[dict]]:
    """Architecture → manifest entries of the teacher checkpoints shipped in assets/ for it."""
    out: dict[str, list[dict]] = {}
    for t in _manifest().get("teachers", []):
        if (ASSETS / t["file"]).is_file():
            out.setdefault(t["arch"], []).append(t)
    return out


def shipped_label(entry: dict) -> str:
    """A shipped teacher as a choice: its manifest accuracy and the data it was measured on."""
    return f"shipped {entry.get('name', entry['arch'])} ({entry['test_acc'] * 100:.1f}% on the {_test_set(entry)})"


def _test_set(entry: dict) -> str:
    return entry.get("test_set", "CIFAR-10 (JPEG copy) test split")


def model_card(arch: str, num_classes: int = 10) -> str:
    """Params, FLOPs, size and stage widths of a registered architecture (cached)."""
    if arch not in MODELS:
        return f"**Unknown architecture `{arch}`.** Choose one of: {', '.join(MODELS)}"
    if arch not in _CARDS:
        model, spec = build_model(arch, num_classes), spec_of(arch, num_classes)
        stages = " · ".join(f"{s.channels}@{s.size[0]}²" for s in spec.stages)
        _CARDS[arch] = (f"**{arch}** — {MODELS[arch].summary}  \n{param_count(model):,} params · "
                        f"{count_flops(model) / 1e6:.1f} MFLOPs · {size_mb(model):.2f} MB  \nstages: {stages} · "
                        f"embedding {spec.embed_dim}")
        sample = _manifest().get("sample", {}).get("images", {}).get("test")
        for shipped in shipped_by_arch().get(arch, []):
            origin = (f" — {shipped['origin']}; licence {shipped.get('licence', '?').split(' ')[0]}"
                      if shipped.get("origin") else "")
            _CARDS[arch] += (f"  \nshipped weights ({shipped.get('name', 'project-trained')}{origin}): "
                             f"{shipped['test_acc'] * 100:.2f}% on the {_test_set(shipped)}")
        if shipped_by_arch().get(arch):
            _CARDS[arch] += ("; a run reports the teacher's accuracy on its own test selection"
                             + (f" (the embedded sample: {sample:,} test images)" if sample else ""))
    return _CARDS[arch]


def verdict_markdown(plan: Plan) -> str:
    if plan.problems:
        return "### ✖ Not ready\n" + "\n".join(f"- {p}" for p in plan.problems)
    lines = []
    v = plan.verdict
    if v is None:
        lines.append("### ✔ Ready — InDistill is off, so no pruning is needed.")
    else:
        lines.append(f"### ✔ {v.summary}")
        lines.append("| layer | pruned net ch. | student ch. | kept | spatial |\n|---|---|---|---|---|")
        for r in v.stages:
            pool = {"teacher": "teacher map pooled", "student": "student map pooled", "none": "same"}[r["pooled"]]
            lines.append(f"| {r['layer']} | {r['teacher_channels']} | {r['student_channels']} | "
                         f"{r['kept_fraction'] * 100:.0f}% | {r['teacher_size'][0]}² → {r['student_size'][0]}² ({pool}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------- Distill

def timeline_figure(plan: Plan) -> go.Figure:
    """Which layer is learned in which epochs, then KD, for every student phase."""
    if not plan.schedules:
        return empty_figure("Schedule", "fix the settings to see the schedule")
    fig = go.Figure()
    rows = [p for p in ("indistill", "kd", "baseline") if p in plan.schedules]
    seen = set()
    for row in rows:
        start = 0.0
        for ph in plan.schedules[row]:
            fig.add_trace(go.Bar(
                y=[LABELS[row]], x=[ph.epochs], base=[start], orientation="h", name=ph.kind,
                marker=dict(color=KIND_COLORS[ph.kind], line=dict(color="#374151", width=1)),
                text=f"{ph.name}<br>{ph.epochs:g} ep", textposition="inside", insidetextanchor="middle",
                hovertemplate=f"{ph.name}: epochs {start:g}–{start + ph.epochs:g} ({ph.loss})<extra></extra>",
                showlegend=ph.kind not in seen, legendgroup=ph.kind))
            seen.add(ph.kind)
            start += ph.epochs
    fig.update_layout(barmode="overlay", template="plotly_white", height=90 + 70 * len(rows),
                      title="Training schedule (epochs)", xaxis_title="epoch", margin=dict(l=10, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.35))
    return fig


# ---------------------------------------------------------------- Train

def status_markdown(snap: Snapshot | None) -> str:
    if not snap:
        return "No run yet — press **Start**."
    state = snap["state"]
    icon = {"queued": "⏳", "running": "▶", "finished": "✔", "failed": "✖", "cancelled": "■",
            "interrupted": "■"}.get(state, "")
    parts = [f"**{icon} {state}** · run `{snap['id']}`" + (" (read-only)" if snap.get("read_only") else "")]
    if snap.get("joined"):
        parts.append("joined: the same settings were already queued or training — started by another visitor")
    elif (snap.get("following") or 0) > 1:
        parts.append(f"{snap['following'] - 1} other visitor{'s' if snap['following'] > 2 else ''} joined it")
    reused = render.reused_units({"phases": snap.get("results") or {}})
    if reused:
        parts.append(f"{len(reused)} unit{'s' if len(reused) > 1 else ''} reused from earlier runs with the same "
                     "settings (not retrained)")
    if state == "queued":
        parts.append(f"position {snap['queue_position']} in the queue")
        if snap.get("queue_wait_s") is not None:
            parts.append(f"about {_clock(snap['queue_wait_s'])} of work ahead (estimated wait), "
                         f"then about {_clock(snap.get('estimate_s') or 0)} to train")
    if snap.get("phase"):
        parts.append(f"phase **{LABELS.get(snap['phase'], snap['phase'])}**" +
                     (f" (seed {snap['seed']})" if snap["phase"] in ("baseline", "kd", "indistill") else ""))
    if snap.get("segment"):
        parts.append(f"learning **{snap['segment']}**")
    last = last_step(snap)
    if last:
        parts.append(f"step {last[1]} · loss {last[2]:.4g}")
    if state == "running":
        parts.append(f"epoch {snap.get('epoch', 0):.2f}")
        parts.append(f"{snap['progress'] * 100:.0f}%")
        if snap.get("eta_s") is not None:
            parts.append(f"ETA {_clock(snap['eta_s'])}")
    if state in ("finished", "cancelled", "failed", "interrupted"):
        parts.append(f"share it: this page's address + `?run={snap['id']}`")
    if snap.get("error"):
        parts.append(f"\n\n**Error:** {snap['error']}")
    return " · ".join(parts)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


# ---------------------------------------------------------------- feature maps (Pruning tab)

APP_CSS = """
#feature-maps .fm-layer{margin:0 0 14px}
#feature-maps .fm-row{display:grid;grid-template-columns:repeat(var(--fm-cols),minmax(0,1fr));gap:12px;align-items:start}
#feature-maps figure{margin:0;min-width:0}
#feature-maps img{display:block;width:100%;height:auto;object-fit:contain;image-rendering:pixelated;
  border:1px solid #e5e7eb;background:#fff}
#feature-maps figcaption{font-size:12px;color:#374151;margin-top:4px}
#compare-table th,#compare-table td{overflow-wrap:anywhere;font-size:12px}
#retrieval-gallery .grid-container{grid-template-columns:repeat(var(--grid-cols),minmax(0,1fr)) !important}
#retrieval-gallery .gallery-item,#retrieval-gallery .thumbnail-item{min-width:0;width:100%;height:auto;aspect-ratio:1}
"""


def _png_data_uri(image) -> str:
    import base64
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def feature_maps_html(layers: list[tuple[str, list[tuple[str, object]]]]) -> str:
    """One row per layer — the teacher's full layer, its kept channels, the student after warm-up —
    each mosaic shown whole (its own aspect, scaled to the column: nothing cropped, no scrolling)."""
    if not layers:
        return ""
    out = []
    for title, figures in layers:
        figs = "".join(f'<figure><img src="{_png_data_uri(img)}" alt="{html.escape(cap)}">'
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, img in figures)
        out.append(f'<div class="fm-layer"><h4>{html.escape(title)}</h4>'
                   f'<div class="fm-row" style="--fm-cols:{len(figures)}">{figs}</div></div>')
    return "".join(out)
