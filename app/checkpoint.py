"""Atomic checkpoint writes and safe (``weights_only``) loads with clear errors."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    pass


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: nn.Module, path: str | Path, meta: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": "indistill-studio/1", "meta": meta, "state_dict": state}, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_model` (or a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint ({type(exc).__name__}); "
                              "expected a file saved by InDistill Studio or a plain state_dict") from None
    if isinstance(blob, dict) and "state_dict" in blob:
        return blob
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return {"format": "state_dict", "meta": {}, "state_dict": blob}
    raise CheckpointError(f"{path.name} holds no state_dict (found {type(blob).__name__})")


def load_into(model: nn.Module, blob: dict, what: str) -> None:
    """Load weights strictly, naming the mismatch if the architecture differs."""
    state = blob["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        arch = blob.get("meta", {}).get("arch", "unknown")
        raise CheckpointError(
            f"{what}: checkpoint (arch {arch}) does not fit {getattr(model, 'arch', type(model).__name__)}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shaped tensors"
            + (f" (e.g. {(missing + unexpected + wrong)[0]})" if missing or unexpected or wrong else ""))
    model.load_state_dict(state)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """The eval-mode network a checkpoint saved by this project holds, and its ``meta``."""
    from models import build_model
    blob = load_checkpoint(path)
    meta = blob.get("meta") or {}
    if "arch" not in meta:
        raise CheckpointError(f"{Path(path).name} has no architecture in its metadata; a checkpoint saved by "
                              "InDistill Studio is needed (a run folder's checkpoints/*.pt or train-teacher --out)")
    model = build_model(meta["arch"], meta.get("num_classes", 10), meta.get("width", 1.0))
    load_into(model, blob, f"checkpoint {Path(path).name}")
    return model.eval(), meta
