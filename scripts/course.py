"""The course from one command: its offline lessons in order, as ordinary run folders, and one report.

    python scripts/course.py [--quick] [--only lesson1,autoencoders] [--out DIR]   # or: make course ARGS=...

Each lesson runs the real entry points (``python train.py ...``, a ``-m`` sweep, ``scripts/transfer_demo.py``,
``cnnlab-models``, ``cnnlab-visualize``) into ``--out`` (default ``outputs/course/<date>/``), one folder per
lesson, then the report reads what they wrote (metrics.json, model.json, the sweep's tables, the pictures of
the TensorBoard event files) into ``index.html`` (one file, pictures embedded) and ``report.md``. A lesson
that fails is reported with its error and the others still run; the exit code is 1 when any failed.
``--only`` with the ``--out`` of an earlier course runs those lessons again and reports them all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from course_report import (
    Figure,
    Findings,
    Section,
    Table,
    cell,
    csv_rows,
    metric_table,
    metrics,
    number,
    png_figures,
    run_figures,
    write_pages,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "train.py")]
VISUALIZE = [sys.executable, "-m", "cnnlab.visualize.cli"]


@dataclass(frozen=True)
class Step:
    """One command of a lesson: a short name and its arguments (run in the repository root)."""

    label: str
    argv: list[str]


@dataclass(frozen=True)
class Lesson:
    """A lesson: what the course claims, the commands that measure it, and how to read their results."""

    name: str
    title: str
    claim: str
    steps: Callable[[Path, bool], list[Step]]
    describe: Callable[[Path], Findings]
    prepare: Callable[[Path], None] | None = None


class LessonFailed(Exception):
    """A step of a lesson failed; the message is its error, as its command printed it."""


def parameters(run: Path) -> int | None:
    """The number of trained weights in a run's best checkpoint (batch norm's statistics left out)."""
    import torch

    ckpt = metrics(run).get("best_checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        return None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    skipped = ("running_mean", "running_var", "num_batches_tracked")
    return sum(t.numel() for k, t in state.items() if not k.endswith(skipped))


# --- the lessons ----------------------------------------------------------------------------------------


def train_step(folder: Path, label: str, recipe: list[str], quick: bool, shortened: list[str]) -> Step:
    """``python train.py <recipe>`` into the run folder ``folder/label``; in quick mode with the shortened
    overrides and one export format (the quickest to write)."""
    exports = "export=null" not in recipe
    extra = [*shortened, *(["export.formats=[torchscript]"] if exports else [])] if quick else []
    return Step(label, [*TRAIN, *recipe, *extra, f"hydra.run.dir={folder / label}"])


def lesson1_prepare(folder: Path) -> None:
    """A photo for the course's filters (scikit-learn's sample) and a test digit for the CNN's pictures."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(load_sample_image("china.jpg"))
    photo.thumbnail((320, 320))  # the filters' edges show at this size, and the report stays small
    photo.save(images / "photo.png")
    digits = load_digits()
    scan = (digits.images[-1] * (255 / 16)).round().astype(np.uint8)  # a scan as a user's image file
    Image.fromarray(scan).save(images / f"digit_{digits.target[-1]}.png")


def lesson1_steps(folder: Path, quick: bool) -> list[Step]:
    """The MLP and the CNN on the digits, then the pictures of what the CNN sees."""
    digit = next((folder / "images").glob("digit_*.png"), folder / "images" / "digit.png")
    cnn = folder / "cnn"
    photo = folder / "images" / "photo.png"
    return [
        train_step(folder, "mlp", ["model=mlp", "export=null"], quick, ["trainer.max_epochs=4"]),
        train_step(folder, "cnn", ["model=simple_cnn"], quick, ["trainer.max_epochs=4"]),
        Step("filters", [*VISUALIZE, "filters", str(photo), "--out", str(folder / "figures")]),
        Step("weights", [*VISUALIZE, "weights", str(cnn)]),
        Step("features", [*VISUALIZE, "features", str(cnn), str(digit), "--stage", "0"]),
        Step("cam", [*VISUALIZE, "cam", str(cnn), str(digit)]),
    ]


def lesson1_describe(folder: Path) -> Findings:
    """Both test accuracies and sizes, the filters, feature maps, CAM and confusion matrix."""
    runs = {"MLP (model=mlp)": folder / "mlp", "course CNN (model=simple_cnn)": folder / "cnn"}
    table = metric_table("test split of the digits", runs, ["test/acc", "test/f1", "best/val/acc"])
    table.header.append("parameters")
    for row, run in zip(table.rows, runs.values(), strict=True):
        row.append(parameters(run))
    mlp, cnn = (metrics(p) for p in runs.values())
    found = Findings(tables=[table])
    found.measured.append(
        f"test accuracy: MLP {number(mlp.get('test/acc'))}, course CNN {number(cnn.get('test/acc'))} "
        f"({number(cnn.get('epochs'), 0)} epochs); parameters: MLP {cell(table.rows[0][-1]) or 'n/a'}, "
        f"CNN {cell(table.rows[1][-1]) or 'n/a'}"
    )
    pictures = [
        (folder / "figures", "filters_*.png", "the course's kernels and pooling on a photo"),
        (folder / "cnn" / "figures", "weights_*.png", "the CNN's first-layer filters"),
        (folder / "cnn" / "figures", "features_*.png", "feature maps of its first stage for a test digit"),
        (folder / "cnn" / "figures", "cam_*.png", "where the CNN looked (Grad-CAM)"),
    ]
    for where, pattern, caption in pictures:
        found.figures += png_figures(where, pattern, caption)
    found.figures += run_figures(
        folder / "cnn",
        {"test/confusion_matrix": "CNN: confusion matrix", "test/predictions": "CNN: test images"},
    )
    return found


SWEEP = [
    "model.batch_norm=false,true",
    "model.dropout=0.0,0.3",
    # random shifts of up to 2 px (padding 0: none); no flips: a mirrored digit is another symbol
    "augmentation=basic",
    "augmentation.hflip=0",
    "augmentation.padding=0,2",
]


def improving_steps(folder: Path, quick: bool) -> list[Step]:
    """One sweep: batch norm x dropout x random shifts, 8 jobs."""
    shortened = ["trainer.max_epochs=4"] if quick else []
    return [
        Step(
            "sweep", [*TRAIN, "-m", *SWEEP, *shortened, "export=null", f"hydra.sweep.dir={folder / 'sweep'}"]
        )
    ]


def improving_describe(folder: Path) -> Findings:
    """The sweep's configurations best first, and its plots."""
    from cnnlab.report import columns, common_overrides, read_jobs, summarize

    sweep = folder / "sweep"
    jobs = read_jobs(sweep)
    cols = columns(jobs)
    ranked = summarize(jobs, cols)
    rows = [[r["config"], r["runs"], *(r[c][0] if c in r else None for c in cols)] for r in ranked]
    caption = "each configuration, best first (the sweep's results.md); every job: " + " ".join(
        common_overrides(jobs)
    )
    found = Findings(tables=[Table(caption, ["config", "runs", *cols], rows)])
    failed = [j for j in jobs if j["status"]["status"] != "completed"]
    found.measured.append(f"{len(jobs)} jobs, {len(failed)} not completed")
    if rows and cols:
        found.measured.append(
            f"best by {cols[0]}: {rows[0][0]} ({number(rows[0][2])}); worst: {rows[-1][0]} "
            f"({number(rows[-1][2])})"
        )
    for plot in sorted((sweep / "plots").glob("*.png")):
        found.figures.append(Figure(f"the score against {plot.stem}", plot.read_bytes()))
    return found


def architectures_steps(folder: Path, quick: bool) -> list[Step]:
    """The comparison table of every classifier (cnnlab-models)."""
    speed = ["--no-speed"] if quick else []
    return [Step("table", [sys.executable, "-m", "cnnlab.models.table", *speed, "--out", str(folder)])]


def architectures_describe(folder: Path) -> Findings:
    """The table, and the most accurate and the cheapest architecture."""
    rows = csv_rows(folder / "models.csv")
    keep = ["model", "arch", "params", "gmacs", "stages", "top1", "year", "eval_img_s", "train_img_s"]
    table = Table(
        "classifiers at 224 px, 1000 classes (models.csv)", keep, [[r.get(k) for k in keep] for r in rows]
    )
    found = Findings(tables=[table])
    scored = [r for r in rows if r.get("top1") and r.get("gmacs")]
    if scored:
        best = max(scored, key=lambda r: float(r["top1"]))
        cheapest = min(scored, key=lambda r: float(r["gmacs"]))
        found.measured.append(
            f"{len(rows)} classifiers; highest ImageNet top-1 (torchvision's weights): {best['model']} "
            f"{best['top1']}% at {best['gmacs']} GMACs; cheapest with weights: {cheapest['model']} "
            f"{cheapest['gmacs']} GMACs, {cheapest['top1']}%"
        )
    return found


def transfer_steps(folder: Path, quick: bool) -> list[Step]:
    """The transfer demo: pretraining, then scratch against fine-tuning over seeds."""
    shortened = ["--seeds", "3", "trainer.max_epochs=6"] if quick else []
    return [
        Step(
            "demo",
            [sys.executable, str(ROOT / "scripts" / "transfer_demo.py"), "--out", str(folder), *shortened],
        )
    ]


def transfer_describe(folder: Path) -> Findings:
    """Both arms' test accuracy and the gain of fine-tuning."""
    summary = metrics(folder)
    rows = [
        [arm, summary.get(f"{arm}/test/acc"), summary.get(f"{arm}/test/acc_std")]
        for arm in ("scratch", "finetune")
    ]
    found = Findings(tables=[Table("test accuracy on digits 5-9 over seeds", ["arm", "mean", "std"], rows)])
    found.measured.append(
        f"source task (digits 0-4) test accuracy {number(summary.get('source/test/acc'))}; on digits 5-9 "
        "from "
        f"{summary.get('target_train_images_per_class', 'n/a')} images per class: from scratch "
        f"{number(summary.get('scratch/test/acc'))}, fine-tuned {number(summary.get('finetune/test/acc'))}, "
        f"gain {number(summary.get('gain'))} +/- {number(summary.get('gain_std'))}; fine-tuning wins "
        f"{summary.get('finetune_wins', 'n/a')} of {summary.get('seeds', 'n/a')} seeds"
    )
    return found


def autoencoders_steps(folder: Path, quick: bool) -> list[Step]:
    """The anomaly and the denoising recipes on the digits."""
    return [
        train_step(folder, "anomaly", ["experiment=ae_anomaly_digits"], quick, ["trainer.max_epochs=5"]),
        train_step(folder, "denoise", ["experiment=ae_denoise_digits"], quick, ["trainer.max_epochs=4"]),
    ]


def autoencoders_describe(folder: Path) -> Findings:
    """AUROC and F1, PSNR before and after, the histogram and the denoised digits."""
    anomaly, denoise = metrics(folder / "anomaly"), metrics(folder / "denoise")
    found = Findings(
        tables=[
            metric_table(
                "anomaly detection: eights are normal",
                {"anomaly": folder / "anomaly"},
                ["test/auroc", "test/ap", "test/f1", "test/threshold"],
            ),
            metric_table(
                "denoising: Gaussian noise of std 0.3",
                {"denoise": folder / "denoise"},
                ["test/psnr_noisy", "test/psnr", "test/psnr_gain", "test/ssim_noisy", "test/ssim"],
            ),
        ]
    )
    found.measured.append(
        f"anomaly detection: test AUROC {number(anomaly.get('test/auroc'))}, "
        f"F1 {number(anomaly.get('test/f1'))} at the threshold chosen on validation"
    )
    found.measured.append(
        f"denoising: PSNR {number(denoise.get('test/psnr_noisy'), 2)} dB for the noisy input, "
        f"{number(denoise.get('test/psnr'), 2)} dB after the autoencoder (gain "
        f"{number(denoise.get('test/psnr_gain'), 2)} dB)"
    )
    found.figures += run_figures(
        folder / "anomaly",
        {
            "test/score_histogram": "anomaly scores: normal against anomalous",
            "test/top_anomalies": "the most anomalous test digits: image, reconstruction, anomaly map",
        },
    )
    found.figures += run_figures(
        folder / "denoise",
        {"test/reconstructions": "rows: clean digits, noisy inputs, the autoencoder's output"},
    )
    return found


def segmentation_steps(folder: Path, quick: bool) -> list[Step]:
    """The UNet recipe on the shapes."""
    shortened = ["data.train_size=128", "data.test_size=16", "trainer.max_epochs=3"]
    return [train_step(folder, "unet", ["experiment=seg_shapes_unet"], quick, shortened)]


def segmentation_describe(folder: Path) -> Findings:
    """Mean and per-class IoU, and the masks drawn over images."""
    run = folder / "unet"
    found = Findings(
        tables=[
            metric_table("UNet on the shapes", {"unet": run}, ["test/miou", "test/dice", "test/pixel_acc"])
        ]
    )
    classes = {k.rsplit("/", 1)[1]: v for k, v in metrics(run).items() if k.startswith("test/iou/")}
    found.measured.append(
        f"test mean IoU {number(metrics(run).get('test/miou'))}; per class: "
        + (", ".join(f"{c} {number(v)}" for c, v in classes.items()) or "n/a")
    )
    found.figures += run_figures(
        run, {"val/overlays": "validation images at the last epoch: image, truth, prediction"}
    )
    return found


def detection_steps(folder: Path, quick: bool) -> list[Step]:
    """The FCOS recipe on the shapes."""
    # a threshold that a short run's scores reach, so that the figures and the export's check show boxes
    shortened = [
        "data.train_size=48",
        "data.test_size=8",
        "trainer.max_epochs=3",
        "task.score_threshold=0.25",
    ]
    return [train_step(folder, "fcos", ["experiment=det_shapes"], quick, shortened)]


def detection_describe(folder: Path) -> Findings:
    """mAP, and the predicted boxes beside the true ones."""
    run = folder / "fcos"
    found = Findings(
        tables=[metric_table("FCOS on the shapes", {"fcos": run}, ["test/map_50", "test/map", "test/map_75"])]
    )
    found.measured.append(
        f"test mAP@0.5 {number(metrics(run).get('test/map_50'))}, "
        f"mAP@[0.5:0.95] {number(metrics(run).get('test/map'))}"
    )
    found.figures += run_figures(run, {"test/detections": "test images: predicted and true boxes"})
    return found


def serving_describe(folder: Path) -> Findings:
    """Each task's best export in the course's folder: its checked differences and the app command."""
    from cnnlab.app.server import ExportedRun, exported_runs
    from cnnlab.export import summary

    best: dict[str, ExportedRun] = {}
    for run in exported_runs(folder.parent):
        task = str(json.loads((run.export / "model.json").read_text()).get("task"))
        if task not in best or run.rank() > best[task].rank():
            best[task] = run
    if not best:
        raise LessonFailed(f"no exported model under {folder.parent}: run the lessons that train first")
    rows, found = [], Findings()
    for task, run in sorted(best.items()):
        described = json.loads((run.export / "model.json").read_text())
        verified = {i.get("verified_on") for i in described.get("formats", {}).values()} - {None}
        for line in summary(described):
            rows.append([task, shown(run.export), " ".join(line.split()), ", ".join(sorted(verified))])
        found.measured.append(
            f"{task} ({run.metric} {number(run.value)}): `make app MODEL={shown(run.export)}` serves it at "
            "http://127.0.0.1:8000"
        )
    header = ["task", "export", "format, file, size, export time, largest differences", "checked on"]
    found.tables.append(Table("each task's best export against its checkpoint (model.json)", header, rows))
    return found


LESSONS = [
    Lesson(
        "lesson1",
        "Lesson 1: a multi-layer perceptron against the course's CNN",
        "The course's MNIST MLP (784-512-512-10, recipe mnist_mlp) reaches at least 98% test accuracy; a "
        "CNN learns small filters shared over the whole image, then pools, so it needs fewer weights than a "
        "dense layer over every pixel and does better on images.",
        lesson1_steps,
        lesson1_describe,
        lesson1_prepare,
    ),
    Lesson(
        "improving",
        "Improving CNNs: batch norm, dropout, augmentation",
        "The course's improved CIFAR-10 CNN (cifar10_improved: batch norm, dropout, augmentation, "
        "one-cycle) reaches at least 80% test accuracy, against 75% for its first CNN (cifar10_cnn). Here a "
        "sweep on the digits shows what each switch does on its own.",
        improving_steps,
        improving_describe,
    ),
    Lesson(
        "architectures",
        "Architectures: from LeNet to ConvNeXt",
        "Later architectures reach higher ImageNet accuracy, and some (MobileNetV3, EfficientNet) with a "
        "small share of the multiply-accumulates of older ones (VGG).",
        architectures_steps,
        architectures_describe,
    ),
    Lesson(
        "transfer",
        "Transfer learning",
        "Weights learned on a related task give a better start than random ones when the new task has few "
        "images (the course's landmark classifier: landmarks_transfer against landmarks_scratch).",
        transfer_steps,
        transfer_describe,
    ),
    Lesson(
        "autoencoders",
        "Autoencoders: anomaly detection and denoising",
        "An autoencoder trained on normal images only reconstructs anomalies worse, so its reconstruction "
        "error detects them; trained on noisy inputs against clean targets, it removes the noise.",
        autoencoders_steps,
        autoencoders_describe,
    ),
    Lesson(
        "segmentation",
        "Semantic segmentation: UNet",
        "A UNet (Ronneberger et al., 2015) labels every pixel: an encoder, a decoder and skip connections "
        "that bring the encoder's detail back.",
        segmentation_steps,
        segmentation_describe,
    ),
    Lesson(
        "detection",
        "Object detection: FCOS",
        "FCOS (Tian et al., 2019) finds objects in one stage without anchor boxes; the det_shapes recipe's "
        "target is a test mAP@0.5 of at least 0.5 on the shapes.",
        detection_steps,
        detection_describe,
    ),
    Lesson(
        "serving",
        "The exported models and the app",
        "An export carries its preprocessing and its task's output, is checked against its checkpoint on "
        "real images at two sizes right after it is written, and serves without the training code.",
        lambda folder, quick: [],
        serving_describe,
    ),
]
BY_NAME = {lesson.name: lesson for lesson in LESSONS}


# --- running --------------------------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A path or command as a person types it in the repository root."""
    return str(value).replace(sys.executable, "python").replace(f"{ROOT}/", "")


def error_of(console: str) -> str:
    """The error a failed command printed: the failed jobs' lines of a sweep, its ``cnnlab:`` paragraph, or
    its last line (a traceback's)."""
    lines = [ln.strip() for ln in console.splitlines() if ln.strip()]
    jobs = [ln.removeprefix("[cnnlab] ") for ln in lines if ln.startswith("[cnnlab] job")]
    if jobs:
        return "; ".join(jobs)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(("cnnlab:", "cnnlab-"))), None)
    if start is not None:
        return " ".join(lines[start : start + 10])
    return lines[-1] if lines else "no output"


def run_step(step: Step, log: Path) -> None:
    """Run one command, its output appended to the lesson's console.log; a failure raises its error."""
    with log.open("a") as file:
        file.write(f"$ {shlex.join(step.argv)}\n")
        file.flush()
        done = subprocess.run(step.argv, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = log.read_text().split(f"$ {shlex.join(step.argv)}\n")[-1]
        raise LessonFailed(f"{step.label}: {error_of(tail)} (its output: {shown(log)})")


def run_lesson(lesson: Lesson, out: Path, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Run a lesson's steps into its folder; what lesson.json records of it (status, error, seconds)."""
    folder = out / lesson.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {"status": "done", "quick": quick, "out": str(out), "commands": []}
    try:
        if lesson.prepare is not None:
            lesson.prepare(folder)
        for step in lesson.steps(folder, quick):
            record["commands"].append(shown(shlex.join(step.argv)))
            begun = time.perf_counter()
            run_step(step, folder / "console.log")
            say(f"      {step.label}: {time.perf_counter() - begun:.0f} s")
        lesson.describe(folder)  # what the report will read is there
    except Exception as err:  # a failed lesson is reported; the course goes on
        record.update(
            status="failed",
            error=str(err) if isinstance(err, LessonFailed) else f"{type(err).__name__}: {err}",
        )
    record["seconds"] = round(time.perf_counter() - started, 1)
    (folder / "lesson.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# --- the report -----------------------------------------------------------------------------------------


def sections(out: Path) -> list[Section]:
    """Every lesson that ran into ``out``, in the course's order, with what its folder shows."""
    from cnnlab.runs import read_json

    found = []
    for lesson in LESSONS:
        record = read_json(out / lesson.name / "lesson.json")
        if not record:
            continue
        quick = " --quick" if record.get("quick") else ""
        rerun = f'make course ARGS="--only {lesson.name}{quick} --out {shown(record.get("out", out))}"'
        section = Section(lesson.name, lesson.title, lesson.claim, record, Findings(), rerun)
        try:
            section.findings = lesson.describe(out / lesson.name)
        except Exception as err:  # a lesson that failed early left little to read
            section.problem = str(err) if isinstance(err, LessonFailed) else f"{type(err).__name__}: {err}"
        found.append(section)
    return found


def write_report(out: Path) -> tuple[Path, Path]:
    """index.html and report.md of every lesson that ran into ``out``."""
    found = sections(out)
    quick = any(s.record.get("quick") for s in found)
    title = f"cnnlab course, {out.name}" + (
        " (quick: shortened recipes, their numbers are no results)" if quick else ""
    )
    return write_pages(out, found, title)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--only`` checked against the lessons."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--quick", action="store_true", help="shortened recipes: minutes on a laptop's CPU")
    cli.add_argument("--only", default="", help=f"comma-separated lessons: {', '.join(BY_NAME)}")
    cli.add_argument(
        "--out", type=Path, default=Path("outputs/course") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    args = cli.parse_args(argv)
    args.lessons = [n.strip() for n in args.only.split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in args.lessons if n not in BY_NAME]
    if unknown:
        cli.error(f"--only {unknown[0]}: no such lesson; the lessons are {', '.join(BY_NAME)}")
    return args


def say(text: str) -> None:
    """A progress line, at once (the course's output is often piped to a file)."""
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the lessons asked for, in the course's order, then write the report; 1 if any failed."""
    args = parse(argv)
    out = args.out.resolve()
    chosen = [lesson for lesson in LESSONS if lesson.name in args.lessons]
    say(f"course{' (quick)' if args.quick else ''}: {len(chosen)} lessons into {shown(out)}/")
    started, failed = time.perf_counter(), []
    for i, lesson in enumerate(chosen, 1):
        say(f"[{i}/{len(chosen)}] {lesson.name}: {lesson.title} ...")
        record = run_lesson(lesson, out, args.quick, say)
        if record["status"] == "failed":
            failed.append(lesson.name)
            say(f"[{i}/{len(chosen)}] {lesson.name} FAILED in {record['seconds']:.0f} s: {record['error']}")
        else:
            say(f"[{i}/{len(chosen)}] {lesson.name} done in {record['seconds']:.0f} s")
    page, markdown = write_report(out)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    verdict = f"{len(failed)} failed ({', '.join(failed)})" if failed else "all done"
    say(f"course: {verdict} in {minutes} min {seconds} s. Report: {shown(page)} and {shown(markdown)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
