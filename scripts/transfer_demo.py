"""Transfer learning, offline: pretrain on digits 0-4, then learn digits 5-9 from 2 images per class,
once from scratch and once fine-tuning the pretrained stages, over several seeds.

    python scripts/transfer_demo.py [--seeds 8] [--per-class 2] [--finetune none] [--out DIR]

Writes ``metrics.json`` (test accuracy per arm: mean, std and every seed; the gain of fine-tuning) and
prints a table. Every run is an ordinary cnnlab run folder under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from cnnlab import CONF_DIR
from cnnlab.train import train

QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "export=null"]


def config(out: Path, *overrides: str) -> DictConfig:
    """conf/train.yaml with ``overrides``, writing its run folder to ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*QUIET, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
    return cfg


def main() -> None:
    """Run the demo and write its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=2, help="target images per class (train + validation)")
    parser.add_argument("--finetune", default="none", help="the finetune option of the fine-tuning arm")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/transfer_demo") / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    args = parser.parse_args()

    source = train(config(args.out / "pretrain", "experiment=transfer_demo_pretrain"))
    checkpoint = source["best_checkpoint"]
    arms: dict[str, list[float]] = {"scratch": [], "finetune": []}
    for seed in range(args.seeds):
        # the same recipe twice: every stage from scratch, or starting from the source run's stages
        for arm, weights, finetune in (("scratch", "null", "none"), ("finetune", checkpoint, args.finetune)):
            cfg = config(
                args.out / f"{arm}_seed{seed}",
                "experiment=transfer_demo",
                f"seed={seed}",
                f"model.weights={weights}",
                f"finetune={finetune}",
                f"data.train_per_class={args.per_class}",
            )
            arms[arm].append(train(cfg)["test/acc"])
    summary = {
        "source/test/acc": source["test/acc"],
        **{f"{arm}/test/acc": statistics.mean(v) for arm, v in arms.items()},
        **{f"{arm}/test/acc_std": statistics.pstdev(v) for arm, v in arms.items()},
        **{f"{arm}/test/acc_per_seed": v for arm, v in arms.items()},
        "gain": statistics.mean(arms["finetune"]) - statistics.mean(arms["scratch"]),
        "target_train_images_per_class": args.per_class,
        "finetune": args.finetune,
        "pretrained_checkpoint": checkpoint,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsource (digits 0-4, all images): test acc {source['test/acc']:.3f}")
    print(f"target (digits 5-9, {args.per_class} images per class):")
    for arm, values in arms.items():
        print(
            f"  {arm:9s} test acc {statistics.mean(values):.3f} +/- {statistics.pstdev(values):.3f}  {values}"
        )
    print(f"results: {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
