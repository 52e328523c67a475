"""Read a model's stage outputs, embedding and logits with forward hooks.

``FeatureTap`` registers hooks once for a phase and removes them on exit, so models stay
plain ``nn.Module``s that can be copied, saved and profiled without hooks attached.
With ``upto=k`` the forward pass stops right after stage ``k``: the warm-up phase for a
shallow layer then costs only the layers it trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models import StagedNet


@dataclass
class Outputs:
    """What one forward pass produced; ``logits``/``embedding`` are None after an early stop."""

    features: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)   # each stage's input (``inputs=True``)
    embedding: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class _Stop(Exception):
    pass


class FeatureTap:
    """Context manager: ``with FeatureTap(net) as tap: out = tap(x, upto=1)``."""

    def __init__(self, model: StagedNet) -> None:
        self.model = model
        self.paths = [path for path, _ in model.stage_layout]
        self._handles: list = []
        self._out: Outputs | None = None
        self._stop_at: int | None = None
        self._want_features = True
        self._want_inputs = False

    def __enter__(self) -> "FeatureTap":
        for i, path in enumerate(self.paths):
            stage = self.model.get_submodule(path)
            self._handles.append(stage.register_forward_pre_hook(self._input_hook))
            self._handles.append(stage.register_forward_hook(self._stage_hook(i)))
        self._handles.append(self.model.classifier_module.register_forward_pre_hook(self._embed_hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _stage_hook(self, index: int):
        def hook(_module, _inp, out):
            if self._out is not None and self._want_features:
                self._out.features.append(out)
            if self._stop_at == index:
                raise _Stop
        return hook

    def _input_hook(self, _module, inp):
        if self._out is not None and self._want_inputs:
            self._out.inputs.append(inp[0])

    def _embed_hook(self, _module, inp):
        if self._out is not None:
            self._out.embedding = inp[0]

    def __call__(self, x: torch.Tensor, upto: int | None = None, features: bool = True,
                 inputs: bool = False) -> Outputs:
        """Forward ``x``; collect stage outputs (if ``features``) and inputs (if ``inputs``), and
        stop after stage ``upto``."""
        if not self._handles:
            raise RuntimeError("FeatureTap used outside its `with` block")
        if upto is not None and not 0 <= upto < len(self.paths):
            raise IndexError(f"stage {upto} out of range for {len(self.paths)} stages")
        self._out, self._stop_at, self._want_features = Outputs(), upto, features or upto is not None
        self._want_inputs = inputs
        try:
            self._out.logits = self.model(x)
        except _Stop:
            pass
        finally:
            out, self._out, self._stop_at = self._out, None, None
        return out
