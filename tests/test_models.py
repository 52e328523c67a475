import pytest
import torch

from app.features import FeatureTap
from models import MODELS, UnknownModelError, build_model, describe


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_exposes_its_stages(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    spec = describe(model)
    x = torch.randn(2, 3, 32, 32)
    with FeatureTap(model) as tap:
        out = tap(x)
    assert out.logits.shape == (2, 7)
    assert out.embedding.shape == (2, spec.embed_dim)
    assert len(out.features) == len(spec.stages) >= 3
    for f, s in zip(out.features, spec.stages):
        assert f.shape[1:] == (s.channels, *s.size)
        if s.conv:
            assert model.get_submodule(s.conv).out_channels == s.channels
    # the hooks are gone after the block: a plain forward gives the same logits
    assert torch.allclose(model(x), out.logits)
    assert not any(m._forward_hooks for m in model.modules())


def test_early_stop_runs_only_the_needed_stages():
    model = build_model("resnet20").eval()
    with FeatureTap(model) as tap:
        out = tap(torch.randn(2, 3, 32, 32), upto=0)
    assert len(out.features) == 1 and out.logits is None and out.embedding is None


@pytest.mark.parametrize("name", ["resnet20", "wrn16_2", "vgg8", "mobilenetv2", "cnn_8_16_32", "cnn4"])
def test_width_multiplier_scales_stage_channels(name):
    base, wide = describe(build_model(name)), describe(build_model(name, width=2))
    assert all(w >= 2 * b - 8 for b, w in zip(base.widths, wide.widths))
    assert all(w > b for b, w in zip(base.widths, wide.widths))


def test_reference_cnn_shapes():
    small, large = build_model("cnn_8_16_32"), build_model("cnn_16_32_64")
    assert describe(small).widths == (8, 16, 32) and describe(large).widths == (16, 32, 64)
    assert small.fc[0].in_features == 128 and small.fc[0].out_features == 64
    assert large.fc[0].in_features == 256 and large.fc[0].out_features == 128
    assert describe(build_model("cnn4")).widths == (16, 32, 64, 128)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UnknownModelError, match="resnet20"):
        build_model("resnet999")
