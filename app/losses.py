"""Knowledge-distillation losses, one registry, each with its paper's defaults.

Every loss is an ``nn.Module`` built from the student's and teacher's
:class:`~models.ModelSpec` (FitNets needs them for its regressor) and called as
``loss(student_out, teacher_out, target, epoch)``. It returns its *weighted* components
by name; the trainer adds ``ce_weight · CE`` and sums everything. Parameters are
declared once (default, range, meaning) so the CLI, the app and validation share them.
Every loss computes in fp32 with autocast off (:func:`app.device.in_fp32`), also when the
networks run in bf16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import ModelSpec

from .device import in_fp32
from .features import Outputs

EPS = 1e-7


@dataclass(frozen=True)
class Param:
    default: float
    low: float
    high: float
    help: str


class KDLoss(nn.Module):
    """Base class. Subclasses set ``name``, ``summary``, ``params`` and implement ``components``."""

    name = "?"
    summary = ""
    params: dict[str, Param] = {}
    needs_features = False
    needs_embedding = False
    uses_logits = False   # whether the loss reads the logits (then it trains the classifier)

    def __init__(self, student: ModelSpec, teacher: ModelSpec, **values: float) -> None:
        super().__init__()
        self.hp = resolve_params(self.name, self.params, values)

    @property
    def ce_weight(self) -> float:
        return 1.0

    @in_fp32
    def forward(self, s: Outputs, t: Outputs, target: torch.Tensor, epoch: float = 0.0) -> dict[str, torch.Tensor]:
        return self.components(s, t, target, epoch)

    def components(self, s: Outputs, t: Outputs, target: torch.Tensor, epoch: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ParamError(ValueError):
    pass


def resolve_params(loss: str, declared: dict[str, Param], values: dict[str, Any]) -> dict[str, float]:
    """Defaults overridden by ``values``; unknown names and out-of-range values raise ParamError."""
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ParamError(f"{loss}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(declared) or 'none'}")
    out = {}
    for key, p in declared.items():
        v = values.get(key, p.default)
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ParamError(f"{loss}.{key} must be a number in [{p.low:g}, {p.high:g}], got {v!r}") from None
        if not p.low <= v <= p.high:
            raise ParamError(f"{loss}.{key} must be in [{p.low:g}, {p.high:g}] ({p.help}), got {v:g}")
        out[key] = v
    return out


# ---------------------------------------------------------------- building blocks

def kl_div_logits(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)), summed over classes, mean over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()


def cosine_kernel(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarity rescaled to [0, 1]; zero rows give 0.5 everywhere, not NaN."""
    x = F.normalize(x.float().flatten(1), dim=1, eps=1e-8)
    return (x @ x.t() + 1.0) / 2.0


def euclidean_kernel(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + ‖x_i − x_j‖); safe (finite gradient) for duplicate rows."""
    x = x.float().flatten(1)
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)
    return 1.0 / (1.0 + torch.sqrt(d2 + 1e-8))


def row_normalise(k: torch.Tensor) -> torch.Tensor:
    return k / k.sum(1, keepdim=True).clamp_min(EPS)


def prob_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean over all entries of p·log(p/q) (the PKT reduction of Passalis & Tefas)."""
    return (p * torch.log((p + EPS) / (q + EPS))).mean()


@in_fp32
def pkt_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Standard PKT: KL(teacher ‖ student) of row-normalised cosine kernels."""
    return prob_kl(row_normalise(cosine_kernel(teacher)), row_normalise(cosine_kernel(student)))


@in_fp32
def pkt_indistill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """InDistill PKT: Jeffreys divergence of cosine and 1/(1+d) kernels, averaged."""
    total = student.new_zeros((), dtype=torch.float32)
    for kernel in (cosine_kernel, euclidean_kernel):
        p, q = row_normalise(kernel(teacher)), row_normalise(kernel(student))
        total = total + prob_kl(p, q) + prob_kl(q, p)
    return total / 2.0


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger so both have the smaller spatial size."""
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    if (ha, wa) == (hb, wb):
        return a, b
    size = (min(ha, hb), min(wa, wb))
    if (ha, wa) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if (hb, wb) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


@in_fp32
def feature_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE between two feature maps, the larger pooled to the smaller's spatial size (fp32)."""
    return F.mse_loss(*match_spatial(a, b))


def pair_stages(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student stage i ↔ teacher stage at the same relative depth."""
    if n_student == 1:
        return [(0, n_teacher - 1)]
    return [(i, round(i * (n_teacher - 1) / (n_student - 1))) for i in range(n_student)]


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(f.float().pow(p).mean(1).flatten(1), dim=1)


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    sq = (e * e).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * e @ e.t()).clamp_min(1e-12)
    d = d2.sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))


# ---------------------------------------------------------------- the losses

class HintonKD(KDLoss):
    name = "kd"
    summary = "Hinton et al. 2015: (1−α)·CE + α·T²·KL(teacher ‖ student)"
    params = {"T": Param(4.0, 0.5, 20.0, "softmax temperature"), "alpha": Param(0.9, 0.0, 1.0, "weight of the KD term")}
    uses_logits = True

    @property
    def ce_weight(self) -> float:
        return 1.0 - self.hp["alpha"]

    def components(self, s, t, target, epoch):
        T, a = self.hp["T"], self.hp["alpha"]
        return {"kd": a * T * T * kl_div_logits(t.logits, s.logits, T)}


class PKT(KDLoss):
    name = "pkt"
    summary = "Passalis & Tefas 2018: match cosine-kernel probability distributions of embeddings"
    params = {"weight": Param(30000.0, 0.0, 1e6, "weight of the PKT term"),
              "ce": Param(1.0, 0.0, 1.0, "weight of cross-entropy beside it (0: PKT alone, as the reference)")}
    needs_embedding = True
    kernel_loss = staticmethod(pkt_loss)

    @property
    def ce_weight(self) -> float:
        return self.hp["ce"]

    def components(self, s, t, target, epoch):
        return {"pkt": self.hp["weight"] * self.kernel_loss(s.embedding, t.embedding)}


class PKTInDistill(PKT):
    name = "pkt_indistill"
    summary = "InDistill's PKT: cosine + Euclidean kernels, symmetric (Jeffreys) divergence"
    # The warm-up uses it alone (with Adam, where the scale is immaterial); as a stage-2
    # loss beside CE its Euclidean term is larger than plain PKT's, hence a smaller weight.
    params = {"weight": Param(1000.0, 0.0, 1e6, "weight of the PKT term"),
              "ce": Param(1.0, 0.0, 1.0, "weight of cross-entropy beside it (0: PKT alone, as the reference)")}
    kernel_loss = staticmethod(pkt_indistill_loss)


class FitNets(KDLoss):
    name = "fitnets"
    summary = "Romero et al. 2015: MSE to a teacher hint layer through a 1×1 regressor"
    params = {"weight": Param(100.0, 0.0, 1e5, "weight of the hint term"),
              "stage": Param(-1.0, -1.0, 16.0, "student stage for the hint (0-based; −1 = middle)")}
    needs_features = True

    def __init__(self, student: ModelSpec, teacher: ModelSpec, **values: float) -> None:
        super().__init__(student, teacher, **values)
        n_s = len(student.stages)
        s_idx = n_s // 2 if self.hp["stage"] < 0 else int(self.hp["stage"])
        if s_idx >= n_s:
            raise ParamError(f"fitnets.stage must be below {n_s} (student stages), got {s_idx}")
        self.s_idx, self.t_idx = s_idx, dict(pair_stages(n_s, len(teacher.stages)))[s_idx]
        c_s, c_t = student.stages[self.s_idx].channels, teacher.stages[self.t_idx].channels
        self.regressor = nn.Identity() if c_s == c_t else nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t))

    def components(self, s, t, target, epoch):
        return {"hint": self.hp["weight"] * feature_mse(self.regressor(s.features[self.s_idx]), t.features[self.t_idx])}


class AttentionTransfer(KDLoss):
    name = "at"
    summary = "Zagoruyko & Komodakis 2017: match normalised spatial attention maps of every stage"
    params = {"weight": Param(1000.0, 0.0, 1e6, "weight of the AT term"), "p": Param(2.0, 1.0, 4.0, "power on activations")}
    needs_features = True

    def __init__(self, student: ModelSpec, teacher: ModelSpec, **values: float) -> None:
        super().__init__(student, teacher, **values)
        self.pairs = pair_stages(len(student.stages), len(teacher.stages))

    def components(self, s, t, target, epoch):
        p, total = self.hp["p"], 0.0
        for i, j in self.pairs:
            fs, ft = match_spatial(s.features[i], t.features[j])
            total = total + (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()
        return {"at": self.hp["weight"] * total}


class RKD(KDLoss):
    name = "rkd"
    summary = "Park et al. 2019: relational KD, distance and angle terms on embeddings"
    params = {"w_dist": Param(25.0, 0.0, 1e4, "weight of the distance term"),
              "w_angle": Param(50.0, 0.0, 1e4, "weight of the angle term")}
    needs_embedding = True

    def components(self, s, t, target, epoch):
        es, et = s.embedding.float().flatten(1), t.embedding.float().flatten(1)
        ds, dt = pairwise_distances(es), pairwise_distances(et)
        off = ~torch.eye(len(es), dtype=torch.bool, device=es.device)
        ds = ds / ds[off].mean().clamp_min(EPS)
        dt = dt / dt[off].mean().clamp_min(EPS)
        dist = F.smooth_l1_loss(ds, dt)
        angle = F.smooth_l1_loss(self._angles(es), self._angles(et))
        return {"rkd_dist": self.hp["w_dist"] * dist, "rkd_angle": self.hp["w_angle"] * angle}

    @staticmethod
    def _angles(e: torch.Tensor) -> torch.Tensor:
        v = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
        return torch.bmm(v, v.transpose(1, 2)).flatten()


class DKD(KDLoss):
    name = "dkd"
    summary = "Zhao et al. 2022: decoupled KD, α·TCKD + β·NCKD with a linear warm-up"
    params = {"alpha": Param(1.0, 0.0, 100.0, "weight of target-class KD"),
              "beta": Param(8.0, 0.0, 100.0, "weight of non-target-class KD"),
              "T": Param(4.0, 0.5, 20.0, "softmax temperature"),
              "warmup": Param(20.0, 0.0, 1000.0, "epochs of linear ramp-up of the DKD term")}
    uses_logits = True

    def components(self, s, t, target, epoch):
        T = self.hp["T"]
        zs, zt = s.logits.float(), t.logits.float()
        gt = F.one_hot(target, zs.shape[1]).bool()
        ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
        # binary (target vs rest) distributions
        bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
        bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
        tckd = (bt * (torch.log(bt + EPS) - torch.log(bs + EPS))).sum(1).mean() * T * T
        # distributions over the non-target classes only
        log_qs = F.log_softmax(zs / T - 1000.0 * gt, 1)
        log_qt = F.log_softmax(zt / T - 1000.0 * gt, 1)
        nckd = (log_qt.exp() * (log_qt - log_qs)).sum(1).mean() * T * T
        ramp = min(epoch / self.hp["warmup"], 1.0) if self.hp["warmup"] > 0 else 1.0
        return {"tckd": ramp * self.hp["alpha"] * tckd, "nckd": ramp * self.hp["beta"] * nckd}


# The warm-up's losses between a student tensor and its pruned-teacher counterpart:
# ``mse`` for the layers, the others for the embedding (``indistill.embed_loss``).
WARMUP_LOSSES = {"mse": feature_mse, "pkt": pkt_loss, "pkt_indistill": pkt_indistill_loss}
EMBED_LOSSES = ("pkt", "pkt_indistill")

LOSSES: dict[str, type[KDLoss]] = {cls.name: cls for cls in (HintonKD, PKT, PKTInDistill, FitNets, AttentionTransfer, RKD, DKD)}


def build_loss(name: str, student: ModelSpec, teacher: ModelSpec, params: dict[str, Any] | None = None) -> KDLoss:
    """Instantiate a registered loss; unknown names and bad parameters raise ParamError."""
    if name not in LOSSES:
        raise ParamError(f"unknown KD loss {name!r}; available: {', '.join(LOSSES)}")
    return LOSSES[name](student, teacher, **(params or {}))


def defaults(name: str) -> dict[str, float]:
    return {k: p.default for k, p in LOSSES[name].params.items()}
