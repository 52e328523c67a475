import copy

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from app.features import FeatureTap
from app.pairing import assess_pair
from app.pruning import PrunedFeatures, filter_l1_norms, plan_pruning, select_channels
from models import build_model, describe


@pytest.mark.parametrize("keep", [1, 5, 12, 16])
def test_channel_choice_agrees_with_torch_ln_structured(keep):
    torch.manual_seed(keep)
    conv = nn.Conv2d(8, 16, 3)
    reference = copy.deepcopy(conv)
    prune.ln_structured(reference, "weight", amount=16 - keep, n=1, dim=0)
    kept_by_torch = sorted(i for i in range(16) if reference.weight_mask[i].any())
    assert select_channels(conv, keep) == kept_by_torch


def test_plan_records_every_norm_and_the_kept_indices():
    torch.manual_seed(0)
    teacher = build_model("resnet56")
    half = describe(build_model("resnet20", width=0.5))
    plans = plan_pruning(teacher, describe(teacher), half)
    assert [len(p.kept) for p in plans] == [8, 16, 32]
    for p in plans:
        norms = torch.tensor(p.norms)
        assert len(norms) == p.teacher_channels
        assert torch.allclose(norms, filter_l1_norms(teacher.get_submodule(p.conv)), atol=1e-5)
        # every kept channel's norm is at least every pruned channel's norm
        pruned = [i for i in range(p.teacher_channels) if i not in p.kept]
        assert norms[p.kept].min() >= norms[pruned].max()
        assert p.kept_fraction == pytest.approx(0.5)


def test_pruned_feature_equals_pruned_residual_block_with_indexed_shortcut():
    """Restricting the stage output to the kept channels is the same as pruning the last
    conv's filters (and its BN) and indexing the identity shortcut with those channels."""
    torch.manual_seed(0)
    teacher = build_model("resnet20").eval()
    for m in teacher.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2); m.weight.data.uniform_(0.5, 1.5)
    plans = plan_pruning(teacher, describe(teacher), describe(build_model("resnet20", width=0.5)))
    x = torch.randn(2, 3, 32, 32)
    with FeatureTap(teacher) as tap:
        full = tap(x).features
    pruned_feats = PrunedFeatures(plans, torch.device("cpu"))(full)
    stage, kept = teacher.layers[1], torch.tensor(plans[1].kept)
    block = stage[-1]
    inp = stage[:-1](full[0])  # the unpruned teacher's input to the stage's last block
    h = torch.relu(block.bn1(block.conv1(inp)))
    conv_w = block.conv2.weight[kept]
    bn = block.bn2
    y = nn.functional.conv2d(h, conv_w, padding=1)
    y = (y - bn.running_mean[kept, None, None]) / torch.sqrt(bn.running_var[kept, None, None] + bn.eps)
    y = y * bn.weight[kept, None, None] + bn.bias[kept, None, None]
    manual = torch.relu(y + inp[:, kept])
    assert torch.allclose(pruned_feats[1], manual, atol=1e-5)


def test_pair_verdicts():
    v = assess_pair("resnet18", "cnn_8_16_32", aux="auto")
    assert v.ok and v.use_aux and v.pruned_arch == "cnn_8_16_32" and v.pruned_width == 2
    v = assess_pair("resnet18", "cnn_8_16_32", aux="off")
    assert not v.ok and "4 stages" in v.messages[0] and any("cnn4" in s for s in v.suggestions)
    v = assess_pair("resnet56", "resnet20", aux="auto")
    assert v.ok and not v.use_aux and [r["kept_fraction"] for r in v.stages] == [1.0, 1.0, 1.0]
    v = assess_pair("resnet8", "resnet32x4", aux="off")
    assert not v.ok and "more than" in v.messages[0]
    v = assess_pair("resnet18", "cnn4", aux="auto", ratio_threshold=2)
    assert v.ok and v.use_aux  # width ratio 4 > 2
    v = assess_pair("vgg13", "shufflenetv2", aux="auto")
    assert not v.ok and "cannot be pruned" in v.summary
