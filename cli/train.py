"""lc-train: train a Layer Cascade network (single / dsn / cascade) and write a checkpoint."""

from __future__ import annotations

import argparse

from layercascade.cli.args import DATA_HELP, float_pair, size, threshold
from layercascade.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    from layercascade.model.config import config_names

    parser = argparse.ArgumentParser(
        prog="lc-train",
        description="Train a Layer Cascade network. Modes: 'single' trains only the final head (the plain "
                    "network baseline); 'dsn' trains every stage head on every pixel (deep supervision); "
                    "'cascade' trains stage k only on the pixels that reach it at --rho, with masks from the "
                    "current predictions (the paper's method, usually started from a dsn model with --init). "
                    "SGD with momentum and a poly learning rate; the checkpoint is written atomically after "
                    "every epoch, with validation mIoU.",
    )
    parser.add_argument("-o", "--output", required=True, metavar="CHECKPOINT.pt", help="checkpoint to write")
    parser.add_argument("--mode", choices=("single", "dsn", "cascade"), default="cascade",
                        help="which heads learn on which pixels (default: cascade)")
    model = parser.add_argument_group("model (a new model unless --init or --resume)")
    model.add_argument("--model", default="tiny", choices=config_names(),
                       help="architecture from the config registry (default: tiny)")
    model.add_argument("--backbone-weights", metavar="FILE",
                       help="ImageNet state dict (.pth/.pt/.safetensors, timm/torchvision names) for the "
                            "backbone of a new model; prints the missing/unexpected keys")
    model.add_argument("--init", metavar="CHECKPOINT", help="start from this checkpoint's weights (new optimizer)")
    model.add_argument("--resume", metavar="CHECKPOINT",
                       help="continue an interrupted run of the same mode from its last finished epoch")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic", metavar="SPEC", help=DATA_HELP)
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the weights, the image order, the augmentation and the synthetic images "
                           "(default: 0)")
    data.add_argument("--train-limit", type=int, metavar="N", help="use only the first N training images")
    data.add_argument("--val-limit", type=int, default=100, metavar="N",
                      help="validate on the first N val images after each epoch (default: 100)")
    data.add_argument("--crop", type=size, default=(128, 128), metavar="HxW",
                      help="training crop (default: 128x128)")
    data.add_argument("--scale", type=float_pair, default=(0.75, 1.25), metavar="MIN,MAX",
                      help="random rescale range before cropping (default: 0.75,1.25); flips are random too")
    data.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0 = in process)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    optim.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    optim.add_argument("--lr", type=float, default=0.02, help="base learning rate of the poly schedule (default: 0.02)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    optim.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay (default: 1e-4)")
    optim.add_argument("--rho", type=threshold, default=0.985,
                       help="cascade threshold: used for the masks in 'cascade' mode, stored as the model's "
                            "default ρ (default: 0.985)")
    optim.add_argument("--freeze-bn", action="store_true",
                       help="freeze BatchNorm statistics and affine parameters (the paper's setting; use it with "
                            "pretrained weights, not from scratch)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.model.config import get_config
    from layercascade.model.train import TrainSettings, train

    settings = TrainSettings(
        mode=args.mode, data=args.data, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, crop=args.crop, scale=args.scale,
        rho=args.rho, freeze_bn=args.freeze_bn, train_limit=args.train_limit, val_limit=args.val_limit,
        workers=args.workers,
    )
    result = train(settings, args.output, config=get_config(args.model), init=args.init, resume=args.resume,
                   backbone_weights=args.backbone_weights, progress=not args.quiet)
    print(f"wrote {result.checkpoint}")
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
