"""Transfer learning, offline: pretrain on translated digits 0-4, then learn translated digits 5-9 from 4
images per class, once from scratch and once fine-tuning the pretrained stages, over several seeds.

    python scripts/transfer_demo.py [--seeds 16] [--per-class 4] [--finetune none] [--freeze K]
                                    [--out DIR] [override ...]

Both arms of a seed train on the same images with the same recipe (conf/experiment/transfer_demo.yaml);
only the starting weights differ. Writes ``metrics.json`` (test accuracy per arm: mean, std and every seed;
the gain of fine-tuning, seed by seed, and how many seeds it wins) and prints a table. Every run is an
ordinary cnnlab run folder under ``--out``. Overrides (``trainer.max_epochs=50``) apply to every run.
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
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=4, help="target images per class (train + val)")
    parser.add_argument("--finetune", default="none", help="the finetune option of the fine-tuning arm")
    parser.add_argument("--freeze", default=None, help="its finetune.freeze: a number of stages, or all")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/transfer_demo") / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    parser.add_argument("overrides", nargs="*", help="config overrides of every run (source and both arms)")
    args = parser.parse_args()

    source_cfg = config(args.out / "pretrain", "experiment=transfer_demo_pretrain", *args.overrides)
    digits = "translated digits" if source_cfg.data.get("canvas") else "digits"
    source = train(source_cfg)
    source_ckpt = source["best_checkpoint"]
    arms: dict[str, list[float]] = {"scratch": [], "finetune": []}
    tune = [f"finetune={args.finetune}"] + ([f"finetune.freeze={args.freeze}"] if args.freeze else [])
    recipes = (("scratch", "null", ["finetune=none"]), ("finetune", source_ckpt, tune))
    for seed in range(args.seeds):
        # the same recipe twice: every stage from scratch, or starting from the source run's stages
        for arm, weights, finetune in recipes:
            cfg = config(
                args.out / f"{arm}_seed{seed}",
                "experiment=transfer_demo",
                f"seed={seed}",
                f"model.weights={weights}",
                *finetune,
                f"data.train_per_class={args.per_class}",
                *args.overrides,
            )
            arms[arm].append(train(cfg)["test/acc"])
    # the arms of one seed share their images and initial head: compare them seed by seed
    gains = [f - s for f, s in zip(arms["finetune"], arms["scratch"], strict=True)]
    summary = {
        "source/test/acc": source["test/acc"],
        **{f"{arm}/test/acc": statistics.mean(v) for arm, v in arms.items()},
        **{f"{arm}/test/acc_std": statistics.pstdev(v) for arm, v in arms.items()},
        **{f"{arm}/test/acc_per_seed": v for arm, v in arms.items()},
        "gain": statistics.mean(gains),
        "gain_std": statistics.pstdev(gains),
        "finetune_wins": sum(g > 0 for g in gains),
        "seeds": args.seeds,
        "target_train_images_per_class": args.per_class,
        "finetune": args.finetune,
        "freeze": args.freeze,
        "overrides": args.overrides,
        "pretrained_checkpoint": source_ckpt,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsource ({digits} 0-4, all images): test acc {source['test/acc']:.3f}")
    target = f"{digits} 5-9, {args.per_class} images per class"
    print(f"target ({target}), test acc over {args.seeds} seeds:")
    for arm, values in arms.items():
        per_seed = " ".join(f"{v:.3f}" for v in values)
        print(f"  {arm:9s} {statistics.mean(values):.3f} +/- {statistics.pstdev(values):.3f}   [{per_seed}]")
    print(
        f"  gain      {summary['gain']:+.3f} +/- {summary['gain_std']:.3f}   "
        f"fine-tuning wins {summary['finetune_wins']} of {args.seeds} seeds"
    )
    print(f"results: {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
