"""Region semantics (docs/architecture.md) of the dense masked reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layercascade.model.backbones.irnet import Block8, Block17, Block35, Mixed6a
from layercascade.model.backbones.resnet import BasicBlock, Bottleneck
from layercascade.model.layers import ConvBnAct, StageHead
from layercascade.model.region import apply_region, fuse_scores, next_mask, region_conv2d, resize_mask, stage_fractions


def random_mask(n: int, h: int, w: int, p: float = 0.4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, h, w, generator=g) < p).float()


def randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics so the BN shift would leak outside M if not masked."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    module.eval()


@pytest.mark.parametrize("dilation", [1, 2, 4])
@pytest.mark.parametrize("kernel", [1, 3])
def test_region_conv_is_conv_times_mask(kernel: int, dilation: int) -> None:
    x = torch.randn(2, 5, 11, 13)
    w = torch.randn(7, 5, kernel, kernel)
    b = torch.randn(7)
    m = random_mask(2, 11, 13)
    pad = dilation * (kernel // 2)
    y = region_conv2d(x, w, b, m, padding=pad, dilation=dilation)
    dense = F.conv2d(x, w, b, padding=pad, dilation=dilation)
    assert torch.equal(y[m.expand_as(y) == 0], torch.zeros_like(y[m.expand_as(y) == 0]))
    torch.testing.assert_close(y[m.expand_as(y) == 1], dense[m.expand_as(y) == 1])


def test_region_conv_reads_neighbours_outside_mask() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 3] = 1.0  # outside the region, right of the only active pixel
    m = torch.zeros(1, 1, 5, 5)
    m[0, 0, 2, 2] = 1.0
    y = region_conv2d(x, torch.ones(1, 1, 3, 3), None, m, padding=1)
    assert y[0, 0, 2, 2] == 1.0 and y.sum() == 1.0


def test_conv_bn_act_zero_outside_mask_despite_bn_shift() -> None:
    block = ConvBnAct(4, 6, 3, act=False)
    randomize_bn(block)
    m = random_mask(1, 9, 9)
    y = block(torch.randn(1, 4, 9, 9), m)
    assert (y * (1 - m)).abs().max() == 0
    assert (y * m).abs().max() > 0


@pytest.mark.parametrize("make_block", [
    lambda: BasicBlock(8, 8, dilation=2, first_dilation=2),
    lambda: Bottleneck(32, 8, dilation=2, first_dilation=2),
    lambda: Block35(dilation=1),
    lambda: Block17(dilation=2),
    lambda: Block8(dilation=4),
    lambda: Block8(scale=1.0, no_relu=True, dilation=4),
], ids=["basic", "bottleneck", "block35", "block17", "block8", "block8-no-relu"])
def test_residual_block_is_identity_outside_mask(make_block) -> None:
    block = make_block()
    randomize_bn(block)
    channels = {BasicBlock: 8, Bottleneck: 32, Block35: 320, Block17: 1088, Block8: 2080}[type(block)]
    x = torch.relu(torch.randn(1, channels, 7, 9))  # block inputs are post-ReLU
    m = random_mask(1, 7, 9)
    with torch.no_grad():
        y = block(x, m)
        dense = block(x, None)
    outside = m.expand_as(y) == 0
    assert torch.equal(y[outside], x[outside])
    assert not torch.allclose(y, x)
    # With M = 1 everywhere the block is the ordinary dense block.
    torch.testing.assert_close(block(x, torch.ones_like(m)), dense)


def test_reduction_block_and_head_are_zero_outside_mask() -> None:
    block = Mixed6a()
    head = StageHead(1088, 16, 21)
    randomize_bn(block)
    randomize_bn(head)
    m = random_mask(1, 6, 7)
    with torch.no_grad():
        features = block(torch.relu(torch.randn(1, 320, 6, 7)), m)
        scores = head(features, m)
    assert features.shape == (1, 1088, 6, 7)
    assert (features * (1 - m)).abs().max() == 0
    assert (scores * (1 - m)).abs().max() == 0
    assert (scores * m).abs().max() > 0


def test_gradients_flow_only_through_region() -> None:
    conv = ConvBnAct(3, 4, 3).eval()  # frozen BN, as in the paper: batch statistics would couple pixels
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:4, 2:4] = 1
    conv(x, m).sum().backward()
    assert x.grad is not None and conv.conv.weight.grad is not None
    assert conv.conv.weight.grad.abs().sum() > 0
    # Only inputs within the 3×3 neighbourhood of the region receive gradient.
    reach = F.max_pool2d(m, 3, 1, 1)[0, 0] > 0
    assert x.grad[0, :, ~reach].abs().max() == 0
    assert x.grad[0, :, reach].abs().max() > 0
    # A zero mask gives exactly zero gradient.
    x.grad = None
    conv(x, torch.zeros_like(m)).sum().backward()
    assert x.grad.abs().max() == 0


def test_next_mask_thresholds_and_nests() -> None:
    scores = torch.zeros(1, 3, 1, 4)
    scores[0, 0, 0] = torch.tensor([10.0, 0.0, 1.0, 3.0])  # confident, uniform, mid, confident-ish
    m2 = next_mask(scores, 0.9, None)
    conf = torch.softmax(scores, 1).amax(1)[0, 0]
    assert m2[0, 0, 0].tolist() == [float(c <= 0.9) for c in conf]
    assert m2[0, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert torch.all(next_mask(scores, 1.0, None) == 1)  # ρ = 1: every pixel goes on
    region = torch.tensor([[[[1.0, 0.0, 1.0, 1.0]]]])
    m3 = next_mask(scores, 0.9, region)
    assert m3[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_fuse_picks_each_stage_in_its_region() -> None:
    s1, s2, s3 = (torch.full((1, 2, 1, 3), float(v)) for v in (1, 2, 3))
    m2 = torch.tensor([[[[0.0, 1.0, 1.0]]]])
    m3 = torch.tensor([[[[0.0, 0.0, 1.0]]]])
    fused = fuse_scores([s1, s2, s3], [m2, m3])
    assert fused[0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert stage_fractions([m2, m3])[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_resize_mask_any_child_rule() -> None:
    high = torch.zeros(1, 1, 4, 4)
    high[0, 0, 3, 0] = 1
    low = resize_mask(high, (2, 2))
    assert low[0, 0].tolist() == [[0.0, 0.0], [1.0, 0.0]]
    up = resize_mask(low, (4, 4))
    assert up[0, 0, 2:, :2].eq(1).all() and up.sum() == 4
    assert apply_region(torch.ones(1, 2, 2, 2), high).sum() == 2
