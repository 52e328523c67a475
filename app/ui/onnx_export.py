"""A student checkpoint of the run on show exported as ONNX (Compare tab): checked against
PyTorch, timed on this CPU, one export at a time, kept for download in the scratch folder.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from .results import fill_once, version_dir
from .sessions import folder_of, session_of
from .studio import shown, studio

LOCAL_TIMED_RUNS = (200, 20)   # timed calls at batch 1 and 256 on a local server (public: limits.export)
_EXPORT_LOCK = threading.Lock()   # exports time the CPU: one at a time, so two don't skew each other


def onnx_choices(session: Any):
    """The student checkpoints of the run on show, for Compare's export picker."""
    folder = folder_of(session_of(session))
    names = [p.stem for p in folder.student_checkpoints()] if folder is not None else []
    return gr.update(choices=names, value=names[0] if names else None)


def export_onnx(session: Any, name: Any):
    """One student checkpoint of the run on show as ONNX: checked against PyTorch on test images,
    both timed on this CPU. One export at a time; a repeat of the same checkpoint is served again."""
    from app.checkpoint import CheckpointError
    from app.export import ExportError, export_for_download
    folder = folder_of(session_of(session))
    students = {p.stem: p for p in folder.student_checkpoints()} if folder is not None else {}
    if not students:
        return None, "Nothing to export: the run on show has no student checkpoints yet (start or open one in Train)."
    if not isinstance(name, str) or name not in students:
        return None, (f"Not exported: {str(name)[:40]!r} is not one of this run's student checkpoints "
                      f"({', '.join(sorted(students))}).")
    ckpt, s = students[name], studio()
    caps = s.limits.export
    out = version_dir("onnx", f"{folder.id}:{name}:{ckpt.stat().st_mtime_ns}")
    if not (out / "summary.md").is_file():
        try:
            held = sum(f.stat().st_size for d in s.scratch.glob("onnx-*") for f in d.iterdir() if f.is_file())
        except OSError:  # another request reaped a folder mid-count: count again next time, assume full now
            held = caps.onnx_scratch_bytes
        if held + ckpt.stat().st_size > caps.onnx_scratch_bytes:
            return None, (f"Not exported: exported models waiting for download already fill this server's "
                          f"{caps.onnx_scratch_bytes / 1e9:g} GB for them; each is kept {caps.kept_s / 60:g} minutes, "
                          "try again then.")
        if not _EXPORT_LOCK.acquire(blocking=False):
            return None, "Another ONNX export is running on this server (one at a time); try again in a few seconds."
        if (out / "summary.md").is_file():  # the same export finished while this request waited for the lock
            _EXPORT_LOCK.release()
            os.utime(out)
            return str(out / f"{name}.onnx"), (out / "summary.md").read_text()
        runs = (caps.onnx_timed_runs, caps.onnx_timed_runs_b256) if s.public else LOCAL_TIMED_RUNS

        def build(tmp: Path) -> None:
            _, md = export_for_download(ckpt, tmp, runs=runs[0], runs_b256=runs[1])
            (tmp / "summary.md").write_text(md)
        try:
            fill_once(out, build)
        except Exception as exc:  # the exporter's own failures too: a message, never a trace
            text = str(exc) if isinstance(exc, (ExportError, CheckpointError)) else f"{type(exc).__name__}: {exc}"
            return None, "Not exported: " + shown(" ".join(text.split())[:500])
        finally:
            _EXPORT_LOCK.release()
    os.utime(out)
    return str(out / f"{name}.onnx"), (out / "summary.md").read_text()
