"""Every loss against a value worked out independently (plain Python / NumPy loops)."""
import math

import numpy as np
import pytest
import torch

from app.features import Outputs
from app.losses import LOSSES, ParamError, build_loss
from models import ModelSpec, StageSpec


def spec(widths, sizes, embed=4, classes=3):
    return ModelSpec("x", tuple(StageSpec(f"s{i}", f"c{i}", w, (h, h)) for i, (w, h) in enumerate(zip(widths, sizes))),
                     embed, classes)


def softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


S_LOGITS = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]
T_LOGITS = [[2.0, 1.0, 0.0], [0.0, 0.5, 2.5]]
TARGET = [1, 2]


def outs(logits=None, emb=None, feats=None):
    return Outputs(features=feats or [], embedding=None if emb is None else torch.tensor(emb, dtype=torch.float64),
                   logits=None if logits is None else torch.tensor(logits, dtype=torch.float64))


def test_hinton_kd_matches_hand_computation():
    T, alpha = 2.0, 0.5
    loss = build_loss("kd", spec([4], [4]), spec([4], [4]), {"T": T, "alpha": alpha})
    expected = 0.0
    for s, t in zip(S_LOGITS, T_LOGITS):
        ps, pt = softmax([x / T for x in s]), softmax([x / T for x in t])
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    expected = alpha * T * T * expected / 2
    got = loss(outs(S_LOGITS), outs(T_LOGITS), torch.tensor(TARGET))
    assert got["kd"].item() == pytest.approx(expected, rel=1e-5)
    assert loss.ce_weight == pytest.approx(1 - alpha)


def _kernel_loss(S, T, kernels, symmetric):
    def rows(K):
        return [[v / sum(r) for v in r] for r in K]

    def kl(P, Q):
        n = len(P)
        return sum(p * math.log((p + 1e-7) / (q + 1e-7)) for rp, rq in zip(P, Q) for p, q in zip(rp, rq)) / (n * n)
    total = 0.0
    for k in kernels:
        P, Q = rows([[k(a, b) for b in T] for a in T]), rows([[k(a, b) for b in S] for a in S])
        total += kl(P, Q) + (kl(Q, P) if symmetric else 0.0)
    return total


def cos_k(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return (sum(x * y for x, y in zip(a, b)) / (na * nb) + 1) / 2


def euc_k(a, b):
    return 1 / (1 + math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))))


S_EMB = [[1.0, 0.0, 2.0], [0.5, 1.0, -1.0], [2.0, 2.0, 0.0], [0.0, -1.0, 1.0]]
T_EMB = [[0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [-1.0, 0.8]]  # no exactly opposite pair (kernel 0)


def test_pkt_matches_hand_computation():
    loss = build_loss("pkt", spec([4], [4]), spec([4], [4]), {"weight": 1.0})
    got = loss(outs(emb=S_EMB), outs(emb=T_EMB), torch.tensor([0, 1, 2, 0]))["pkt"].item()
    assert got == pytest.approx(_kernel_loss(S_EMB, T_EMB, [cos_k], False), rel=1e-4)


def test_pkt_indistill_matches_hand_computation():
    loss = build_loss("pkt_indistill", spec([4], [4]), spec([4], [4]), {"weight": 1.0})
    got = loss(outs(emb=S_EMB), outs(emb=T_EMB), torch.tensor([0, 1, 2, 0]))["pkt"].item()
    assert got == pytest.approx(_kernel_loss(S_EMB, T_EMB, [cos_k, euc_k], True) / 2, rel=1e-4)


@pytest.mark.parametrize("name", ["pkt", "pkt_indistill", "rkd"])
def test_embedding_losses_are_finite_on_duplicate_and_zero_rows(name):
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.5, -1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    loss = build_loss(name, spec([4], [4]), spec([4], [4]))
    total = sum(loss(Outputs(embedding=s), Outputs(embedding=t), torch.tensor([0, 1, 2, 0])).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()


def test_fitnets_is_weighted_mse_after_pooling_the_larger_map():
    s_feat = torch.randn(2, 4, 4, 4)
    t_feat = torch.randn(2, 4, 8, 8)
    loss = build_loss("fitnets", spec([4, 4, 4], [4, 4, 4]), spec([4, 4, 4], [8, 8, 8]), {"weight": 3.0, "stage": 1})
    assert isinstance(loss.regressor, torch.nn.Identity)
    pooled = t_feat.reshape(2, 4, 4, 2, 4, 2).mean(dim=(3, 5))  # 2×2 average pool by hand
    expected = 3.0 * ((s_feat - pooled) ** 2).mean().item()
    got = loss(Outputs(features=[None, s_feat, None]), Outputs(features=[None, t_feat, None]), None)["hint"].item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_fitnets_regressor_when_widths_differ():
    loss = build_loss("fitnets", spec([4, 8, 16], [8, 4, 2]), spec([8, 16, 32], [8, 4, 2]))
    assert loss.s_idx == 1 and loss.t_idx == 1
    assert loss.regressor[0].in_channels == 8 and loss.regressor[0].out_channels == 16


def test_attention_transfer_matches_numpy():
    rng = np.random.default_rng(0)
    fs = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2))]
    ft = [rng.normal(size=(2, 6, 4, 4)), rng.normal(size=(2, 4, 2, 2))]

    def att(f):
        a = (f ** 2).mean(1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    expected = 1000.0 * sum(((att(a) - att(b)) ** 2).mean() for a, b in zip(fs, ft))
    loss = build_loss("at", spec([3, 5], [4, 2]), spec([6, 4], [4, 2]))
    got = loss(Outputs(features=[torch.tensor(f) for f in fs]), Outputs(features=[torch.tensor(f) for f in ft]), None)
    assert got["at"].item() == pytest.approx(expected, rel=1e-5)


def _smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()


def test_rkd_matches_numpy():
    s, t = np.array(S_EMB), np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [2.0, -1.0, 0.5], [-1.0, 0.5, 0.0]])

    def dist(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=2)
        return d / d[~np.eye(len(e), dtype=bool)].mean()

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j != i and k != i:
                        u, v = e[j] - e[i], e[k] - e[i]
                        out[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return out
    loss = build_loss("rkd", spec([4], [4]), spec([4], [4]))
    got = loss(outs(emb=s.tolist()), outs(emb=t.tolist()), None)
    assert got["rkd_dist"].item() == pytest.approx(25 * _smooth_l1(dist(s), dist(t)), rel=1e-4)
    assert got["rkd_angle"].item() == pytest.approx(50 * _smooth_l1(angles(s), angles(t)), rel=1e-4)


def test_dkd_matches_hand_computation_with_warmup():
    alpha, beta, T, warm, epoch = 1.0, 8.0, 2.0, 20.0, 5.0
    tckd = nckd = 0.0
    for s, t, g in zip(S_LOGITS, T_LOGITS, TARGET):
        ps, pt = softmax([x / T for x in s]), softmax([x / T for x in t])
        bs, bt = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
        tckd += sum(b * math.log(b / a) for a, b in zip(bs, bt))
        qs = softmax([x / T for i, x in enumerate(s) if i != g])
        qt = softmax([x / T for i, x in enumerate(t) if i != g])
        nckd += sum(b * math.log(b / a) for a, b in zip(qs, qt))
    ramp = epoch / warm
    loss = build_loss("dkd", spec([4], [4]), spec([4], [4]), {"alpha": alpha, "beta": beta, "T": T, "warmup": warm})
    got = loss(outs(S_LOGITS), outs(T_LOGITS), torch.tensor(TARGET), epoch=epoch)
    assert got["tckd"].item() == pytest.approx(ramp * alpha * T * T * tckd / 2, rel=1e-4)
    assert got["nckd"].item() == pytest.approx(ramp * beta * T * T * nckd / 2, rel=1e-4)


def test_loss_params_are_validated():
    with pytest.raises(ParamError, match="unknown parameter"):
        build_loss("kd", spec([4], [4]), spec([4], [4]), {"tau": 3})
    with pytest.raises(ParamError, match=r"alpha must be in \[0, 1\]"):
        build_loss("kd", spec([4], [4]), spec([4], [4]), {"alpha": 2})
    with pytest.raises(ParamError, match="available"):
        build_loss("nope", spec([4], [4]), spec([4], [4]))


def test_registry_holds_the_six_families():
    assert {"kd", "pkt", "pkt_indistill", "fitnets", "at", "rkd", "dkd"} <= set(LOSSES)
