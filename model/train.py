"""Training: ``single`` (final head only), ``dsn`` (every head on every pixel) and
``cascade`` (each stage's loss only on the pixels that reach it, as in the paper)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from layercascade.contract import check_threshold
from layercascade.errors import fail
from layercascade.model.checkpoint import Checkpoint, check_checkpoint_target, load_checkpoint, save_checkpoint
from layercascade.model.config import ModelConfig
from layercascade.model.data import SegmentationDataset, open_dataset
from layercascade.model.data.images import resize_image, resize_labels
from layercascade.model.evaluate import evaluate, torch_predictor
from layercascade.model.network import LayerCascadeNet, normalize
from layercascade.model.region import resize_mask

MODES = ("single", "dsn", "cascade")
IGNORE = 255
_print_now = partial(print, flush=True)


@dataclass
class TrainSettings:
    """Everything that decides a training run (stored in the checkpoint's metadata)."""

    mode: str = "cascade"
    data: str = "synthetic"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    crop: tuple[int, int] = (128, 128)
    scale: tuple[float, float] = (0.75, 1.25)
    rho: float = 0.985
    freeze_bn: bool = False
    train_limit: int | None = None
    val_limit: int | None = 100
    workers: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            fail(f"unknown training mode {self.mode!r}; choose one of {', '.join(MODES)}")
        check_threshold(self.rho)

    @property
    def val_rho(self) -> float:
        """ρ used for validation: the training ρ for cascade, the dense network otherwise."""
        return self.rho if self.mode == "cascade" else 1.0


class AugmentedCrops(torch.utils.data.Dataset):
    """Random scale, crop and flip of a data set, deterministic per (seed, epoch, index)."""

    def __init__(self, dataset: SegmentationDataset, settings: TrainSettings) -> None:
        self.dataset = dataset
        self.settings = settings
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.settings.seed, self.epoch, index])
        image, label = self.dataset[index]
        scale = rng.uniform(*self.settings.scale)
        height, width = label.shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image, label = resize_image(image, size), resize_labels(label, size)
        crop_h, crop_w = self.settings.crop
        pad_h, pad_w = max(crop_h - size[0], 0), max(crop_w - size[1], 0)
        if pad_h or pad_w:
            # Pad with the mean colour region ignored by the loss.
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=124)
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
        top = rng.integers(0, image.shape[0] - crop_h + 1)
        left = rng.integers(0, image.shape[1] - crop_w + 1)
        image = image[top:top + crop_h, left:left + crop_w]
        label = label[top:top + crop_h, left:left + crop_w]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return torch.from_numpy(image.copy()), torch.from_numpy(label.astype(np.int64))


def stage_losses(scores: list[Tensor], masks: list[Tensor], labels: Tensor, mode: str) -> list[Tensor]:
    """Cross-entropy of each trained head against ``labels`` (ignore 255).

    ``single`` trains the final head only; ``dsn`` every head on every pixel; ``cascade``
    stage k only on the pixels in its region (masks carry no gradient).
    """
    losses = []
    for index, stage_scores in enumerate(scores):
        if mode == "single" and index < len(scores) - 1:
            continue
        target = labels
        if mode == "cascade" and index > 0:
            region = resize_mask(masks[index - 1], tuple(labels.shape[-2:]))[:, 0] > 0
            target = torch.where(region, labels, torch.full_like(labels, IGNORE))
        logits = F.interpolate(stage_scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        counted = (target != IGNORE).sum().clamp(min=1)
        losses.append(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / counted)
    return losses


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BN in eval mode with frozen affine parameters (the paper's setting)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """``base · (1 − step/total)^power``."""
    return base * (1.0 - min(step, total) / total) ** power


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict] = field(default_factory=list)


def train(
    settings: TrainSettings,
    output: str | Path,
    config: ModelConfig | None = None,
    init: str | Path | None = None,
    resume: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    log: Callable[[str], None] = _print_now,
    progress: bool = True,
) -> TrainResult:
    """Train a Layer Cascade network and write a checkpoint to ``output`` after every epoch.

    Args:
        config: architecture for a new model (ignored with ``init``/``resume``).
        init: start from this checkpoint's weights (e.g. a ``dsn`` model for ``cascade``).
        resume: continue this checkpoint's run (same settings, optimizer state kept).
        backbone_weights: ImageNet state dict for the backbone of a new model.
    """
    check_checkpoint_target(Path(output))  # before any training, not after the first epoch
    torch.manual_seed(settings.seed)
    start_epoch, history, optimizer_state = 0, [], None
    source = resume or init
    if source is not None:
        previous = load_checkpoint(source)
        config = previous.config
        if resume is not None:
            if previous.resume is None:
                fail(f"{resume}: checkpoint has no optimizer state to resume from; use --init instead")
            if previous.training.get("mode") != settings.mode:
                fail(f"{resume}: was trained in mode {previous.training.get('mode')!r}, not {settings.mode!r}")
            start_epoch = int(previous.resume["epoch"]) + 1
            optimizer_state = previous.resume["optimizer"]
            history = list(previous.training.get("history", []))
        classes, palette = previous.classes, previous.palette
    if config is None:
        fail("no model: give a config, --init or --resume")
    train_set = open_dataset(settings.data, "train", seed=settings.seed, limit=settings.train_limit)
    val_set = open_dataset(settings.data, "val", seed=settings.seed, limit=settings.val_limit)
    if source is None:
        classes, palette = list(train_set.classes), train_set.palette.tolist()
    if len(classes) != config.num_classes:
        fail(f"data set {settings.data!r} has {len(train_set.classes)} classes, the model {config.num_classes}")

    model = LayerCascadeNet(config)
    if source is not None:
        model.load_state_dict(previous.state_dict)
    elif backbone_weights is not None:
        from layercascade.model.weights import load_backbone_weights

        log(f"backbone weights {backbone_weights}: {load_backbone_weights(model.backbone, backbone_weights).summary()}")
    model.train()
    if settings.freeze_bn:
        freeze_batchnorm(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    crops = AugmentedCrops(train_set, settings)
    steps_per_epoch = math.ceil(len(crops) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    # The input size recorded for export is the data set's native one (the crop is a training detail).
    input_size = list(val_set[0][1].shape)
    base = Checkpoint(config, {}, classes, palette, input_size=input_size, default_rho=settings.rho)
    output = Path(output)
    for epoch in range(start_epoch, settings.epochs):
        crops.epoch = epoch
        order = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            crops, batch_size=settings.batch_size, shuffle=True, generator=order, drop_last=False,
            num_workers=settings.workers, persistent_workers=False)
        model.train()
        if settings.freeze_bn:
            freeze_batchnorm(model)
        started, running = time.time(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs} [{settings.mode}]", unit="batch",
                   disable=not progress, leave=False)
        for step, (images, labels) in enumerate(bar, start=epoch * steps_per_epoch):
            lr = poly_lr(settings.lr, step, total_steps, settings.poly_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = normalize(images, tuple(base.mean), tuple(base.std))
            train_rho = settings.rho if settings.mode == "cascade" else 1.0
            scores, masks = model.run_stages(x, train_rho)
            loss = sum(stage_losses(scores, masks, labels, settings.mode))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}", lr=f"{lr:.4f}")
        predict = torch_predictor(model, base.mean, base.std)
        result = evaluate(predict, val_set, [settings.val_rho], classes, progress=progress)[0]
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(running)), 5),
                        "val_miou": result.miou, "val_rho": settings.val_rho,
                        "stage_fractions": result.stage_fractions, "seconds": round(time.time() - started, 1)})
        metadata = asdict(settings) | {"history": history, "init": str(init) if init else None,
                                       "torch": str(torch.__version__)}
        metadata["crop"], metadata["scale"] = list(settings.crop), list(settings.scale)
        checkpoint = Checkpoint(config, model.state_dict(), classes, palette, base.mean, base.std,
                                input_size, settings.rho, metadata,
                                resume={"optimizer": optimizer.state_dict(), "epoch": epoch})
        save_checkpoint(checkpoint, output)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['loss']:.4f}  "
            f"val mIoU {result.miou:.2f} (ρ={settings.val_rho:g}, {len(val_set)} images)  "
            f"{history[-1]['seconds']:.0f}s")
    return TrainResult(output, history)
