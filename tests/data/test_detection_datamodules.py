"""Detection data through its configs: COCO, VOC, YOLO, Penn-Fudan and shapes datamodules on files in their
real layouts, batches as torchvision's detectors take them, and augmentation presets that keep every box on
its object."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from fakedense import COCO_CATEGORIES, SCENES, write_coco, write_penn_fudan, write_voc, write_yolo
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision import tv_tensors
from torchvision.transforms import v2

from cnnlab import CONF_DIR, config  # noqa: F401  (config registers the resolvers)
from cnnlab.data import detection_presets as presets
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.transforms import train_transform
from cnnlab.data.voc import VOC_CLASSES
from cnnlab.tasks.detection import DetectionTask

COCO_NAMES = [COCO_CATEGORIES[k] for k in sorted(COCO_CATEGORIES)]


def data_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["task=detection", "data.num_workers=0", *overrides]).data


def datamodule(*overrides: str, augmentation: Any = None) -> Any:
    """The datamodule a detection run builds from ``data=...`` overrides, set up."""
    dm = instantiate(data_config(*overrides), _partial_=True)(
        augmentation=augmentation, spec=DetectionTask.samples
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def items(loader: Any) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Every (image, target) of a loader, unbatched."""
    return [pair for images, targets in loader for pair in zip(images, targets, strict=True)]


def check_detection_batch(dm: Any) -> None:
    """A batch is a list of float images in [0, 1] of their own sizes and a list of target dicts."""
    images, targets = next(iter(dm.test_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
    for image, target in zip(images, targets, strict=True):
        assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape[0] == 3
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert target["boxes"].shape == (len(target["labels"]), 4) and target["labels"].dtype == torch.int64


def write_coco_2017(root: Path) -> Path:
    """The fake scenes in COCO 2017's layout: train2017/, val2017/ and annotations/instances_*2017.json."""
    write_coco(root / "raw")
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        shutil.copytree(root / "raw" / "images", root / split)
        shutil.copy(root / "raw" / "instances.json", root / "annotations" / f"instances_{split}.json")
    return root


def test_coco_config_reads_coco_2017_layout(tmp_path: Path) -> None:
    write_coco_2017(tmp_path / "coco")
    dm = datamodule("data=coco", f"paths.data_dir={tmp_path}", "data.num_classes=3", "data.batch_size=3")
    assert dm.class_names == COCO_NAMES and dm.provides() == ("boxes",)
    check_detection_batch(dm)
    test = items(dm.test_dataloader())
    for (image, target), scene in zip(test, SCENES, strict=True):
        assert image.shape[1:] == (scene.height, scene.width)
        # the zero-width box of the first image is dropped; labels follow increasing category ids
        assert target["boxes"].tolist() == [rect.box for rect in scene.rects]
        assert target["labels"].tolist() == [rect.label for rect in scene.rects]
        assert target["iscrowd"].tolist() == [rect.crowd for rect in scene.rects]
    assert len(dm.train_set) + len(dm.val_set) == len(SCENES)


def test_coco_with_another_number_of_classes_names_the_right_one(tmp_path: Path) -> None:
    write_coco_2017(tmp_path / "coco")
    with pytest.raises(ValueError, match="set data.num_classes=3"):
        datamodule("data=coco", f"paths.data_dir={tmp_path}", "data.num_classes=80")


def test_coco_splits_with_different_categories_are_refused(tmp_path: Path) -> None:
    root = write_coco_2017(tmp_path / "coco")
    test_file = root / "annotations" / "instances_val2017.json"
    content = json.loads(test_file.read_text())
    content["categories"][0]["name"] = "horse"
    test_file.write_text(json.dumps(content))
    with pytest.raises(DatasetFormatError, match="different categories"):
        datamodule("data=coco", f"paths.data_dir={tmp_path}", "data.num_classes=3")


def test_missing_coco_files_say_what_to_fetch_and_which_keys_name_them(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)instances_train2017.json.*data.train_images.*val2017"
    ):
        datamodule("data=coco", f"paths.data_dir={tmp_path}")


def test_voc_detection_config_reads_boxes_and_difficult_flags(tmp_path: Path, network_lookups) -> None:
    write_voc(tmp_path / "voc")
    dm = datamodule("data=voc_detection", f"paths.data_dir={tmp_path}", "data.download=false")
    assert dm.class_names == VOC_CLASSES and dm.num_classes == 20
    check_detection_batch(dm)
    # train lists scenes a and b (validation carved from them), val (the test split) scene c
    assert len(dm.train_set) + len(dm.val_set) == 2 and len(dm.test_set) == 1
    pool = items(dm.train_dataloader()) + items(dm.val_dataloader())
    found = {tuple(map(tuple, t["boxes"].tolist())): t for _, t in pool}
    scene = SCENES[0]
    target = found[tuple(tuple(rect.box) for rect in scene.rects)]
    assert target["labels"].tolist() == [rect.label for rect in scene.rects]
    assert target["difficult"].tolist() == [False, True]
    assert network_lookups == []


def test_voc_detection_can_drop_difficult_objects(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc")
    overrides = ["data=voc_detection", f"paths.data_dir={tmp_path}", "data.download=false"]
    dm = datamodule(*overrides, "data.keep_difficult=false", "data.val_fraction=0.5")
    pool = items(dm.train_dataloader()) + items(dm.val_dataloader())
    assert sorted(len(t["labels"]) for _, t in pool) == [1, 1]  # scene a lost its difficult object
    assert not any(t["difficult"].any() for _, t in pool)


def test_yolo_folder_config_reads_normalised_boxes(tmp_path: Path) -> None:
    dataset_yaml = write_yolo(tmp_path / "yolo")
    dm = datamodule("data=yolo_folder", f"data.dataset_yaml={dataset_yaml}", "data.num_classes=3")
    assert dm.class_names == ["cat", "dog", "zebra"]
    check_detection_batch(dm)
    ((image, target),) = items(dm.test_dataloader())  # the val split: scene c, no objects
    assert image.shape[1:] == (SCENES[2].height, SCENES[2].width) and target["boxes"].shape == (0, 4)
    pool = items(dm.train_dataloader()) + items(dm.val_dataloader())
    boxes = sorted(box for _, t in pool for box in t["boxes"].tolist())
    expected = sorted(rect.box for scene in SCENES[:2] for rect in scene.rects)
    torch.testing.assert_close(torch.tensor(boxes), torch.tensor(expected), atol=1e-3, rtol=0)


def test_yolo_folder_needs_its_dataset_yaml() -> None:
    with pytest.raises(Exception, match="data.dataset_yaml"):
        instantiate(data_config("data=yolo_folder", "data.num_classes=3"))


def test_penn_fudan_serves_detection_with_person_labels_after_the_background(tmp_path: Path) -> None:
    write_penn_fudan(tmp_path / "penn_fudan")
    dm = datamodule("data=penn_fudan", f"paths.data_dir={tmp_path}", "data.download=false")
    assert dm.class_names == ["background", "person"]
    check_detection_batch(dm)
    everything = items(dm.train_dataloader()) + items(dm.val_dataloader()) + items(dm.test_dataloader())
    boxes = sorted(box for _, t in everything for box in t["boxes"].tolist())
    assert boxes == sorted(rect.box for scene in SCENES for rect in scene.rects)
    assert all((t["labels"] == 1).all() for _, t in everything)
    # evaluation keeps every photo's own size: the detector resizes by itself
    assert sorted(i.shape[1:] for i, _ in everything) == sorted((s.height, s.width) for s in SCENES)


def test_shapes_serve_detection_with_boxes_on_their_shapes() -> None:
    dm = datamodule("data=shapes", "data.train_size=8", "data.test_size=4", "data.batch_size=4")
    check_detection_batch(dm)
    _, targets = next(iter(dm.test_dataloader()))
    raw = dm.load_split("test")
    for index, target in enumerate(targets):
        _, truth = raw[index]
        assert torch.equal(target["boxes"], truth["boxes"].as_subclass(torch.Tensor))
        assert (target["labels"] >= 1).all() and set(target) == {"boxes", "labels"}
        for (x0, y0, x1, y1), instance in zip(
            target["boxes"].int().tolist(), truth["instance_masks"], strict=True
        ):
            ys, xs = torch.nonzero(instance, as_tuple=True)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


# --- augmentation presets: boxes stay on their objects ---------------------------------------------------

#: rectangles (x0, y0, x1, y1) of a 96 x 80 picture, one colour each
OBJECTS = [(6, 8, 30, 40), (44, 12, 60, 30), (70, 44, 92, 76), (20, 52, 48, 70)]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def picture() -> tuple[tv_tensors.Image, dict[str, Any]]:
    """A black picture with coloured rectangles, their boxes, labels (their index) and masks."""
    image = torch.zeros(3, 80, 96, dtype=torch.uint8)
    masks = torch.zeros(len(OBJECTS), 80, 96, dtype=torch.uint8)
    for k, ((x0, y0, x1, y1), colour) in enumerate(zip(OBJECTS, COLOURS, strict=True)):
        image[:, y0:y1, x0:x1] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
        masks[k, y0:y1, x0:x1] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(OBJECTS, dtype=torch.float32), format="XYXY", canvas_size=(80, 96)
        ),
        "labels": torch.arange(len(OBJECTS)),
        "difficult": torch.tensor([False, True, False, False]),
        "masks": tv_tensors.Mask(masks),
    }
    return tv_tensors.Image(image), target


def tight_box(where: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(where, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def assert_boxes_on_objects(image: torch.Tensor, target: dict[str, Any], atol: float, colours: bool) -> None:
    """Each kept box is the tight box of its object's visible pixels (its mask and, unjittered, its colour).

    Padding fills masks with the ignored class (255): an object's pixels are those equal to 1.
    """
    assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) == len(target["difficult"])
    height, width = image.shape[-2:]
    for box, label, mask, difficult in zip(
        target["boxes"].tolist(),
        target["labels"].tolist(),
        target["masks"],
        target["difficult"].tolist(),
        strict=True,
    ):
        assert difficult == (label == 1)  # flags travel with their boxes
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        torch.testing.assert_close(torch.tensor(box), torch.tensor(tight_box(mask == 1)), atol=atol, rtol=0)
        if colours:
            colour = torch.tensor(COLOURS[label], dtype=torch.float32)[:, None, None] / 255
            painted = ((image - colour).abs().amax(0) < 0.1) & (mask == 1)
            torch.testing.assert_close(
                torch.tensor(box), torch.tensor(tight_box(painted)), atol=atol + 1, rtol=0
            )


@pytest.mark.parametrize(
    ("preset", "options", "atol"),
    [
        (presets.flip, {"hflip": 1.0}, 0.0),
        (presets.ssd, {"photometric": 0.0}, 0.0),
        (presets.ssd, {}, 0.0),
        (presets.scale_jitter, {}, 1.5),
    ],
    ids=["flip", "ssd_geometry", "ssd", "scale_jitter"],
)
def test_augmented_boxes_stay_on_their_objects(preset: Any, options: dict[str, Any], atol: float) -> None:
    pipeline = train_transform(lambda **sizes: preset(**sizes, **options), 64, 64, None, None, "none")
    torch.manual_seed(0)
    shown = set()
    for _ in range(20):
        image, target = pipeline(*picture())
        assert image.dtype == torch.float32
        assert_boxes_on_objects(image, target, atol, colours=options.get("photometric", 0.5) == 0)
        shown.add((tuple(image.shape), len(target["boxes"])))
    assert len(shown) > 1 or preset is presets.flip  # the random presets did change the samples


def test_flip_mirrors_every_box() -> None:
    image, target = train_transform(lambda **s: presets.flip(**s, hflip=1.0), 64, 64, None, None, "none")(
        *picture()
    )
    mirrored = [[96 - x1, y0, 96 - x0, y1] for x0, y0, x1, y1 in OBJECTS]
    assert target["boxes"].tolist() == mirrored and target["labels"].tolist() == [0, 1, 2, 3]


def test_crops_drop_the_boxes_they_leave_too_small() -> None:
    image, target = picture()
    crop = v2.Compose([v2.RandomCrop((80, 31), padding=None), *presets.finish(min_box_size=2.0)])
    torch.manual_seed(0)
    for _ in range(20):
        _, out = crop(image, target)
        widths = out["boxes"][:, 2] - out["boxes"][:, 0]
        heights = out["boxes"][:, 3] - out["boxes"][:, 1]
        assert (widths >= 2).all() and (heights >= 2).all() and (out["boxes"][:, 2] <= 31).all()
        assert len(out["labels"]) == len(out["boxes"]) == len(out["difficult"])


def test_presets_need_sensible_options() -> None:
    with pytest.raises(ValueError, match="augmentation.scale_range"):
        presets.scale_jitter(64, 64, scale_range=(0.0, 2.0))
    with pytest.raises(ValueError, match="augmentation.max_zoom_out"):
        presets.ssd(64, 64, max_zoom_out=0.5)


@pytest.mark.parametrize("option", ["det_flip", "det_ssd", "det_lsj"])
def test_augmentation_configs_feed_shapes_batches(option: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=detection", "data=shapes", f"augmentation={option}"])
    dm = datamodule(
        "data=shapes", "data.train_size=8", "data.batch_size=4", augmentation=instantiate(cfg.augmentation)
    )
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 4 and all(image.dtype == torch.float32 for image in images)
    for image, target in zip(images, targets, strict=True):
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 2] <= image.shape[-1]).all()
        assert (boxes[:, 3] <= image.shape[-2]).all() and len(target["labels"]) == len(boxes)


def test_a_validation_split_of_the_datasets_own_replaces_the_carved_one(tmp_path: Path) -> None:
    dataset_yaml = write_yolo(tmp_path / "yolo")
    overrides = [f"data.dataset_yaml={dataset_yaml}", "data.num_classes=3", "data.val_split=val"]
    dm = datamodule("data=yolo_folder", *overrides)
    assert (len(dm.train_set), len(dm.val_set)) == (2, 1)  # every training image trains
    ((_, target),) = items(dm.val_dataloader())
    assert target["boxes"].shape == (0, 4)  # scene c, the YAML's val image
    write_voc(tmp_path / "voc")
    voc = ["data=voc_detection", f"paths.data_dir={tmp_path}", "data.download=false", "data.val_split=val"]
    dm = datamodule(*voc)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (2, 1, 1)
    write_coco_2017(tmp_path / "coco")
    pair = ["data.val_images=val2017", "data.val_annotations=annotations/instances_val2017.json"]
    dm = datamodule("data=coco", f"paths.data_dir={tmp_path}", "data.num_classes=3", *pair)
    assert (len(dm.train_set), len(dm.val_set)) == (3, 3)
    with pytest.raises(ValueError, match="data.val_images and data.val_annotations go together"):
        datamodule("data=coco", f"paths.data_dir={tmp_path}", "data.num_classes=3", pair[0])


# --- boxes outside the image: clipped or dropped when read, in the test split as in training ---------------


def coco_test_split_with_boxes_outside(root: Path) -> tuple[list[str], Path]:
    """COCO 2017's layout; the test split's scene a (48 x 40) gets a box past the right and bottom edges and
    one right of the image."""
    write_coco_2017(root / "coco")
    test_file = root / "coco" / "annotations" / "instances_val2017.json"
    content = json.loads(test_file.read_text())
    for bbox in ([40, 30, 16, 15], [50, 4, 6, 6]):
        number = len(content["annotations"]) + 1
        content["annotations"].append({"id": number, "image_id": 10, "category_id": 3, "bbox": bbox})
    test_file.write_text(json.dumps(content))
    return ["data=coco", f"paths.data_dir={root}", "data.num_classes=3"], test_file


def voc_test_split_with_boxes_outside(root: Path) -> tuple[list[str], Path]:
    """VOC's layout; the test split's scene c (36 x 30) gets a cat past the right and bottom edges and a dog
    below the image (1-based corners, as VOC writes them)."""
    xml = write_voc(root / "voc") / "Annotations" / "scene_c.xml"
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in (("cat", 30, 25, 40, 34), ("dog", 4, 32, 9, 36))
    )
    xml.write_text(xml.read_text().replace("</annotation>", f"{objects}</annotation>"))
    return ["data=voc_detection", f"paths.data_dir={root}", "data.download=false"], xml.parent


def yolo_test_split_with_boxes_outside(root: Path) -> tuple[list[str], Path]:
    """A YOLO folder; the test split's scene c (36 x 30) gets a box past the right and bottom edges and one
    below the image."""
    dataset_yaml = write_yolo(root / "yolo")
    labels = root / "yolo" / "labels" / "val"
    (labels / "scene_c.txt").write_text("2 0.9 0.9 0.4 0.4\n1 0.5 1.0008 0.2 0.001\n")
    return ["data=yolo_folder", f"data.dataset_yaml={dataset_yaml}", "data.num_classes=3"], labels


@pytest.mark.parametrize(
    "write",
    [
        coco_test_split_with_boxes_outside,
        voc_test_split_with_boxes_outside,
        yolo_test_split_with_boxes_outside,
    ],
    ids=["coco", "voc", "yolo"],
)
def test_test_split_boxes_outside_the_image_are_clipped_or_dropped(
    tmp_path: Path, write: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The test split gets no augmentation, so no preset sanitises its boxes: the readers do."""
    overrides, source = write(tmp_path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=detection", *overrides, "augmentation=det_flip"])
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.boxes"):
        dm = datamodule(*overrides, augmentation=instantiate(cfg.augmentation))
    test = items(dm.test_dataloader())
    for image, target in test:
        height, width = image.shape[1:]
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert len(target["labels"]) == len(boxes)
    # COCO tests on every scene, VOC and YOLO on scene c; one added box is kept, clipped to the corner
    scenes = SCENES if len(test) == len(SCENES) else SCENES[-1:]
    assert sum(len(t["boxes"]) for _, t in test) == sum(len(s.rects) for s in scenes) + 1
    assert any([i.shape[2], i.shape[1]] in t["boxes"][:, 2:].tolist() for i, t in test)
    (line,) = [r.getMessage() for r in caplog.records if f"data: {source}" in r.getMessage()]
    assert "clipped 1" in line and "dropped" in line
