"""Training: losses per mode, a few steps lowering the loss, checkpoints, resume, determinism."""

from __future__ import annotations

import pytest
import torch

from layercascade.errors import LCError
from layercascade.model.checkpoint import load_checkpoint
from layercascade.model.config import get_config
from layercascade.model.data import open_dataset
from layercascade.model.network import LayerCascadeNet, normalize
from layercascade.model.train import AugmentedCrops, TrainSettings, poly_lr, stage_losses, train


def fixed_batch(n: int = 4, crop: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    crops = AugmentedCrops(open_dataset("synthetic", "train", limit=n), TrainSettings(crop=(crop, crop)))
    images, labels = zip(*(crops[i] for i in range(n)))
    return torch.stack(images), torch.stack(labels)


@pytest.mark.parametrize("mode", ["single", "dsn", "cascade"])
def test_a_few_steps_lower_the_loss(mode: str) -> None:
    torch.manual_seed(0)
    model = LayerCascadeNet(get_config("tiny")).train()
    images, labels = fixed_batch()
    x = normalize(images, (124.0, 116.0, 104.0), (58.0, 57.0, 57.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    rho = 0.7 if mode == "cascade" else 1.0
    losses = []
    for _ in range(12):
        scores, masks = model.run_stages(x, rho)
        loss = sum(stage_losses(scores, masks, labels, mode))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_losses_per_mode_count_the_right_heads_and_pixels() -> None:
    torch.manual_seed(0)
    scores = [torch.randn(1, 3, 4, 4, requires_grad=True) for _ in range(3)]
    labels = torch.randint(0, 3, (1, 8, 8))
    m2 = torch.zeros(1, 1, 4, 4)
    m2[..., :2, :] = 1
    m3 = torch.zeros(1, 1, 4, 4)
    assert len(stage_losses(scores, [m2, m3], labels, "single")) == 1
    assert len(stage_losses(scores, [m2, m3], labels, "dsn")) == 3
    cascade = stage_losses(scores, [m2, m3], labels, "cascade")
    assert cascade[2].item() == 0.0  # nobody reaches stage 3
    cascade[1].backward()
    grad = scores[1].grad[0].abs().sum(0)
    # Bilinear upsampling reaches one low-res row beyond the region's edge, never further.
    assert grad[:3].sum() > 0 and grad[3:].sum() == 0
    assert cascade[1].item() > 0


def test_poly_schedule() -> None:
    assert poly_lr(0.1, 0, 100, 0.9) == 0.1
    assert poly_lr(0.1, 100, 100, 0.9) == 0.0
    assert 0 < poly_lr(0.1, 50, 100, 0.9) < 0.1


def small_settings(mode: str, epochs: int) -> TrainSettings:
    return TrainSettings(mode=mode, epochs=epochs, batch_size=4, crop=(64, 64), train_limit=8, val_limit=4,
                         rho=0.9)


def test_train_writes_checkpoint_and_resumes_deterministically(tmp_path) -> None:
    one = train(small_settings("dsn", 2), tmp_path / "a.pt", config=get_config("tiny"), progress=False,
                log=lambda _: None)
    assert [h["epoch"] for h in one.history] == [1, 2]
    first = load_checkpoint(tmp_path / "a.pt")
    assert first.training["mode"] == "dsn" and first.resume["epoch"] == 1
    assert len(first.training["history"]) == 2 and "val_miou" in first.training["history"][0]

    def interrupt(_: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped right after epoch 1's checkpoint was written
        train(small_settings("dsn", 2), tmp_path / "b.pt", config=get_config("tiny"), progress=False,
              log=interrupt)
    assert load_checkpoint(tmp_path / "b.pt").resume["epoch"] == 0
    train(small_settings("dsn", 2), tmp_path / "b.pt", resume=tmp_path / "b.pt", progress=False,
          log=lambda _: None)
    resumed = load_checkpoint(tmp_path / "b.pt")
    assert [h["epoch"] for h in resumed.training["history"]] == [1, 2]
    for key, value in first.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, msg=key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_cascade_from_dsn_init_and_bad_resume(tmp_path) -> None:
    train(small_settings("dsn", 1), tmp_path / "dsn.pt", config=get_config("tiny"), progress=False,
          log=lambda _: None)
    result = train(small_settings("cascade", 1), tmp_path / "lc.pt", init=tmp_path / "dsn.pt", progress=False,
                   log=lambda _: None)
    assert result.history[0]["val_rho"] == 0.9
    checkpoint = load_checkpoint(tmp_path / "lc.pt")
    assert checkpoint.training["init"].endswith("dsn.pt") and checkpoint.default_rho == 0.9
    with pytest.raises(LCError, match="was trained in mode 'dsn'"):
        train(small_settings("cascade", 2), tmp_path / "x.pt", resume=tmp_path / "dsn.pt", progress=False)
    with pytest.raises(LCError, match="unknown training mode"):
        TrainSettings(mode="boosting")
