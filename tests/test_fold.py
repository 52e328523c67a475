"""Batch-norm folding keeps a frozen network's stage outputs, embedding and logits."""
import pytest
import torch
from torch import nn

from app.features import FeatureTap
from app.fold import fold_batchnorm
from models import build_model


def calibrated(arch: str, dtype=torch.float32) -> nn.Module:
    """A model whose batch norms hold real (non-default) running statistics and affine terms."""
    torch.manual_seed(0)
    model = build_model(arch).to(dtype=dtype)
    if dtype == torch.float32:  # as the engine runs it (float64 channels-last convolutions are very slow)
        model = model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32, dtype=dtype) * 2 + 0.3)
    return model.eval()


@pytest.mark.parametrize("arch,dtype,tol", [("cnn_16_32_64", torch.float32, 1e-5), ("resnet8", torch.float32, 1e-5),
                                            ("wrn16_2", torch.float32, 1e-5), ("mobilenetv2", torch.float64, 1e-9)])
def test_folded_copy_matches_stage_outputs_and_logits(arch, dtype, tol):
    """fp32 on shallow nets; float64 on MobileNetV2, whose 52 folded pairs add fp32 rounding
    of about 1e-4 by the last stage (the folding itself is exact: 1e-13 in float64)."""
    model = calibrated(arch, dtype)
    folded = fold_batchnorm(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert folded.folded_pairs > 0 and sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_bn - folded.folded_pairs
    assert not any(p.requires_grad for p in folded.parameters()) and not folded.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    with torch.no_grad(), FeatureTap(model) as ref_tap, FeatureTap(folded) as tap:
        ref, out = ref_tap(x), tap(x)
        early = tap(x, upto=1)
    pairs = list(zip(ref.features + [ref.embedding, ref.logits], out.features + [out.embedding, out.logits]))
    assert len(pairs) == len(model.stage_layout) + 2
    for a, b in pairs:
        assert (a - b).abs().max().item() <= tol
    assert len(early.features) == 2 and early.logits is None  # hooks on stage modules still stop early


def test_a_conv_output_used_twice_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Branchy().eval()
    model.bn.running_mean.fill_(0.5)
    folded = fold_batchnorm(model)
    assert folded.folded_pairs == 0 and isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), folded(x))
