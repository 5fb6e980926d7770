"""Backbones, stage split, cascade inference, FLOPs and ImageNet weight loading."""

from __future__ import annotations

import pytest
import torch

from layercascade.errors import LCError
from layercascade.model.backbones import build_backbone
from layercascade.model.config import ModelConfig, get_config
from layercascade.model.flops import ideal_speedup, stage_costs
from layercascade.model.network import LayerCascadeNet
from layercascade.model.weights import load_backbone_weights

# Trunk parameter counts of torchvision's ImageNet ResNets without ``fc``.
TORCHVISION_TRUNK_PARAMS = {"resnet18": 11_176_512, "resnet50": 23_508_032, "resnet101": 42_500_160}

STAGE_CHANNELS = {
    "tiny": (32, 64, 96),
    "resnet18": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
    "irnet": (320, 1088, 1536),
}

# Names that ImageNet checkpoints of timm / torchvision use.
TIMM_KEYS = {
    "resnet50": ["conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer2.0.downsample.0.weight",
                 "layer3.5.bn2.bias", "layer4.0.downsample.1.running_mean", "layer4.2.conv2.weight"],
    "resnet18": ["layer1.1.conv2.weight", "layer3.0.downsample.1.weight", "layer4.1.bn2.num_batches_tracked"],
    "irnet": ["conv2d_1a.conv.weight", "conv2d_4a.bn.running_var", "mixed_5b.branch3.1.conv.weight",
              "repeat.9.branch2.2.bn.running_mean", "mixed_6a.branch1.2.conv.weight", "repeat_1.19.conv2d.bias",
              "mixed_7a.branch2.2.bn.weight", "repeat_2.8.branch1.2.conv.weight", "block8.conv2d.weight",
              "conv2d_7b.bn.bias"],
}


@pytest.mark.parametrize("name", list(STAGE_CHANNELS))
def test_stage_shapes_and_split(name: str) -> None:
    model = LayerCascadeNet(get_config(name)).eval()
    x = torch.randn(1, 3, 41, 57)  # odd sizes: stride-2 layers must round consistently
    with torch.no_grad():
        for index, channels in enumerate(STAGE_CHANNELS[name]):
            x, scores = model.forward_stage(index, x)
            assert x.shape == (1, channels, 6, 8), (index, x.shape)
            assert scores.shape == (1, 21, 6, 8)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "irnet"])
def test_timm_parameter_names(name: str) -> None:
    keys = build_backbone(name).state_dict().keys()
    for key in TIMM_KEYS[name]:
        assert key in keys


@pytest.mark.parametrize("name", list(TORCHVISION_TRUNK_PARAMS))
def test_resnet_parameter_count_matches_imagenet_trunk(name: str) -> None:
    assert sum(p.numel() for p in build_backbone(name).parameters()) == TORCHVISION_TRUNK_PARAMS[name]


def test_irnet_dilations_follow_output_stride_8() -> None:
    backbone = build_backbone("irnet")
    assert backbone.repeat[0].branch1[1].conv.dilation == (1, 1)
    conv_1x7 = backbone.repeat_1[0].branch1[1].conv
    assert conv_1x7.dilation[1] == 2 and conv_1x7.padding == (0, 6)
    assert backbone.mixed_7a.branch0[1].conv.dilation == (2, 2)
    conv_3x1 = backbone.repeat_2[0].branch1[2].conv
    assert conv_3x1.dilation[0] == 4 and conv_3x1.padding == (4, 0)
    assert backbone.mixed_6a.branch0.conv.stride == (1, 1)


def test_cascade_at_rho_one_is_the_dense_network() -> None:
    torch.manual_seed(0)
    model = LayerCascadeNet(get_config("tiny")).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        out = model(x, 1.0)
        features = x
        for index in range(3):
            features, scores = model.forward_stage(index, features)
    torch.testing.assert_close(out.fused, scores)
    assert out.labels.shape == (2, 48, 40)
    assert torch.all(out.masks[0] == 1) and torch.all(out.masks[1] == 1)
    assert out.stage_fractions.tolist() == [[0.0, 0.0, 1.0]] * 2


def test_cascade_regions_fusion_and_fractions() -> None:
    torch.manual_seed(0)
    model = LayerCascadeNet(get_config("tiny")).eval()
    # Make stage 1 confident on part of the image by biasing its classifier.
    with torch.no_grad():
        model.heads[0].classifier.weight.mul_(40)
        x = torch.randn(1, 3, 64, 64)
        conf = torch.softmax(model.forward_stage(0, x)[1], 1).amax(1)
        rho = float(conf.median())
        out = model(x, rho)
    m2, m3 = out.masks
    assert 0 < m2.mean() < 1
    assert torch.all(m3 <= m2)
    assert torch.all(out.scores[1] * (1 - m2) == 0) and torch.all(out.scores[2] * (1 - m3) == 0)
    keep1 = (m2 == 0).expand_as(out.fused)
    assert torch.equal(out.fused[keep1], out.scores[0][keep1])
    fractions = out.stage_fractions[0]
    assert fractions.sum().item() == pytest.approx(1.0)
    assert fractions[0].item() == pytest.approx(1 - m2.mean().item())
    with pytest.raises(LCError, match=r"rho must be a number in \(0, 1\]"):
        model(x, 0.0)


def test_stage_costs_put_most_flops_in_stages_2_and_3() -> None:
    for name in ("tiny", "irnet"):
        costs = stage_costs(get_config(name), (512, 512))
        total = sum(c.backbone_macs for c in costs)
        assert (costs[1].backbone_macs + costs[2].backbone_macs) / total > 0.8
    costs = stage_costs(get_config("resnet50"), (512, 512))
    # layer4 of a dilated ResNet-50 at 64×64: 3 blocks of 1×1/3×3/1×1 convs + the downsample.
    expected_layer4 = 64 * 64 * (
        (1024 * 512 + 512 * 512 * 9 + 512 * 2048 + 1024 * 2048)
        + 2 * (2048 * 512 + 512 * 512 * 9 + 512 * 2048)
    )
    assert costs[2].backbone_macs == expected_layer4
    assert ideal_speedup(costs, (1.0, 1.0)) < 1.0  # heads cost extra when every pixel goes through
    assert ideal_speedup(costs, (0.3, 0.15)) > 2.0


def test_backbone_weights_load_with_report(tmp_path) -> None:
    from safetensors.torch import save_file

    source = build_backbone("resnet18")
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    weights["fc.weight"] = torch.zeros(1000, 512)
    weights["fc.bias"] = torch.zeros(1000)
    del weights["layer4.1.bn2.running_var"]
    for path in (tmp_path / "r18.pth", tmp_path / "r18.safetensors"):
        if path.suffix == ".pth":
            torch.save({"state_dict": weights}, path)
        else:
            save_file(weights, str(path))
        target = build_backbone("resnet18")
        report = load_backbone_weights(target, path)
        assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
        assert report.missing == ["layer4.1.bn2.running_var"]
        assert report.loaded == len(weights) - 2
        torch.testing.assert_close(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
        assert "missing 1" in report.summary()


def test_backbone_weights_for_another_architecture_are_refused(tmp_path) -> None:
    path = tmp_path / "irnet.pth"
    torch.save(build_backbone("tiny").state_dict(), path)
    with pytest.raises(LCError, match="none of its"):
        load_backbone_weights(build_backbone("irnet"), path)


def test_config_registry() -> None:
    assert get_config("irnet").backbone == "irnet"
    assert get_config("tiny", num_classes=19).num_classes == 19
    assert ModelConfig.from_dict(get_config("resnet50").to_dict()) == get_config("resnet50")
    with pytest.raises(LCError, match="unknown model config"):
        get_config("vgg16")
    with pytest.raises(LCError):
        ModelConfig.from_dict({"backbone": "tiny", "color": "red"})
