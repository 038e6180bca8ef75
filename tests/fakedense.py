"""Small segmentation, detection and anomaly datasets written in their real on-disk layouts, for reader tests.

Every writer draws the same known scenes: filled rectangles of known classes at known pixels, so a test can
assert the exact boxes, labels and mask values a reader gives back. Writers are deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cnnlab.data.voc import VOC_CLASSES


@dataclass(frozen=True)
class Rect:
    """A filled rectangle of class ``label`` covering pixels x0..x1-1 and y0..y1-1."""

    label: int
    x0: int
    y0: int
    x1: int
    y1: int
    difficult: bool = False
    crowd: bool = False

    @property
    def box(self) -> list[float]:
        """The rectangle as a 0-based XYXY box of pixel edges."""
        return [float(self.x0), float(self.y0), float(self.x1), float(self.y1)]


@dataclass(frozen=True)
class Scene:
    """One image: its size and the rectangles drawn in it, at least two pixels apart."""

    name: str
    width: int
    height: int
    rects: tuple[Rect, ...]


SCENES = (
    Scene("scene_a", 48, 40, (Rect(0, 4, 6, 20, 18), Rect(2, 26, 10, 44, 34, difficult=True))),
    Scene("scene_b", 40, 32, (Rect(1, 10, 8, 30, 26, crowd=True),)),
    Scene("scene_c", 36, 30, ()),
)
COCO_CATEGORIES = {7: "zebra", 1: "cat", 3: "dog"}  # listed out of order: labels follow increasing ids
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40))


def draw(scene: Scene, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """The scene's picture: coloured rectangles on noise, as RGB, grey ("L") or 16-bit grey ("I;16")."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(scene.height, scene.width, 3)).astype(np.uint8)
    for rect in scene.rects:
        pixels[rect.y0 : rect.y1, rect.x0 : rect.x1] = COLOURS[rect.label % len(COLOURS)]
    image = Image.fromarray(pixels)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        return Image.fromarray(grey)
    return image.convert(mode)


def class_mask(scene: Scene, offset: int = 1, border: int | None = None) -> np.ndarray:
    """(H, W) uint8 indices: 0 outside, label + ``offset`` inside, ``border`` on a 1-pixel ring around."""
    mask = np.zeros((scene.height, scene.width), dtype=np.uint8)
    for rect in scene.rects:
        if border is not None:
            mask[max(rect.y0 - 1, 0) : rect.y1 + 1, max(rect.x0 - 1, 0) : rect.x1 + 1] = border
        mask[rect.y0 : rect.y1, rect.x0 : rect.x1] = rect.label + offset
    return mask


def voc_palette() -> list[int]:
    """Pascal VOC's 256-colour palette (as its devkit's ``labelcolormap`` builds it), flat R, G, B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_penn_fudan(root: str | Path, scenes: Sequence[Scene] = SCENES) -> Path:
    """Write ``root/PennFudanPed`` with PNG photos and instance-id masks (1..N in rectangle order)."""
    folder = Path(root) / "PennFudanPed"
    for sub in ("PNGImages", "PedMasks", "Annotation"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for number, scene in enumerate(scenes, start=1):
        stem = f"FudanPed{number:05d}"
        draw(scene).save(folder / "PNGImages" / f"{stem}.png")
        ids = np.zeros((scene.height, scene.width), dtype=np.uint8)
        for person, rect in enumerate(scene.rects, start=1):
            ids[rect.y0 : rect.y1, rect.x0 : rect.x1] = person
        mask = Image.fromarray(ids).convert("P")
        mask.putpalette([0, 0, 0] + [255, 255, 255] * 255)
        mask.save(folder / "PedMasks" / f"{stem}_mask.png")
        (folder / "Annotation" / f"{stem}.txt").write_text(f"Image filename : PNGImages/{stem}.png\n")
    return folder


def write_voc(root: str | Path, year: str = "2012", scenes: Sequence[Scene] = SCENES) -> Path:
    """Write ``root/VOCdevkit/VOC<year>`` (JPEGs, palette masks with 255 borders, XMLs, split lists)."""
    folder = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        draw(scene).save(folder / "JPEGImages" / f"{scene.name}.jpg", quality=95)
        mask = Image.fromarray(class_mask(scene, offset=1, border=255)).convert("P")
        mask.putpalette(voc_palette())
        mask.save(folder / "SegmentationClass" / f"{scene.name}.png")
        (folder / "Annotations" / f"{scene.name}.xml").write_text(_voc_xml(scene))
    names = [scene.name for scene in scenes]
    for task in ("Segmentation", "Main"):
        for split, stems in (("train", names[:-1]), ("val", names[-1:]), ("trainval", names)):
            (folder / "ImageSets" / task / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return folder


def _voc_xml(scene: Scene) -> str:
    objects = "".join(
        f"<object><name>{VOC_CLASSES[rect.label]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(rect.difficult)}</difficult><bndbox><xmin>{rect.x0 + 1}</xmin>"
        f"<ymin>{rect.y0 + 1}</ymin><xmax>{rect.x1}</xmax><ymax>{rect.y1}</ymax></bndbox></object>\n"
        for rect in scene.rects
    )
    return (
        f"<annotation><folder>VOC2012</folder><filename>{scene.name}.jpg</filename>\n"
        f"<size><width>{scene.width}</width><height>{scene.height}</height><depth>3</depth></size>\n"
        f"<segmented>1</segmented>\n{objects}</annotation>\n"
    )


def write_coco(root: str | Path, scenes: Sequence[Scene] = SCENES) -> tuple[Path, Path]:
    """Write ``root/images/*.jpg`` and ``root/instances.json``; return both paths.

    Rectangle label k is the k-th category in increasing id order. A zero-width box is added to the first
    image, which a reader must drop.
    """
    images_dir = Path(root) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted(COCO_CATEGORIES)
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=10):
        draw(scene).save(images_dir / f"{scene.name}.jpg", quality=95)
        images.append(
            {"id": image_id, "file_name": f"{scene.name}.jpg", "width": scene.width, "height": scene.height}
        )
        for rect in scene.rects:
            width, height = rect.x1 - rect.x0, rect.y1 - rect.y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[rect.label],
                    "bbox": [rect.x0, rect.y0, width, height],
                    "area": width * height,
                    "iscrowd": int(rect.crowd),
                    "segmentation": [],
                }
            )
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 10,
            "category_id": ids[0],
            "bbox": [5, 5, 0, 4],
            "area": 0,
            "iscrowd": 0,
        }
    )
    categories = [
        {"id": cid, "name": name, "supercategory": "animal"} for cid, name in COCO_CATEGORIES.items()
    ]
    annotation_file = Path(root) / "instances.json"
    content = {"info": {}, "images": images, "annotations": annotations, "categories": categories}
    annotation_file.write_text(json.dumps(content))
    return images_dir, annotation_file


def write_yolo(
    root: str | Path,
    names: Sequence[str] | dict[int, str] = ("cat", "dog", "zebra"),
    scenes: Sequence[Scene] = SCENES,
) -> Path:
    """Write a YOLO dataset (``data.yaml``, ``images/{train,val}``, ``labels/{train,val}``); return the YAML.

    The last scene goes to val, the others to train; scenes without rectangles get an empty label file
    (a background image, as YOLO's tools write it).
    """
    root = Path(root)
    for number, scene in enumerate(scenes):
        split = "val" if number == len(scenes) - 1 else "train"
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        draw(scene).save(root / "images" / split / f"{scene.name}.png")
        (root / "labels" / split / f"{scene.name}.txt").write_text(
            "".join(
                f"{r.label} {(r.x0 + r.x1) / 2 / scene.width:.6f} {(r.y0 + r.y1) / 2 / scene.height:.6f} "
                f"{(r.x1 - r.x0) / scene.width:.6f} {(r.y1 - r.y0) / scene.height:.6f}\n"
                for r in scene.rects
            )
        )
    dataset_yaml = root / "data.yaml"
    names = dict(names) if isinstance(names, dict) else list(names)
    dataset_yaml.write_text(
        yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "names": names})
    )
    return dataset_yaml


def write_mask_folder(
    root: str | Path,
    scenes: Sequence[Scene] = SCENES,
    classes: Sequence[str] | None = None,
    mode: str = "RGB",
) -> Path:
    """Write ``root/images/*.png`` (in ``mode``) and ``root/masks/*.png`` of indices label + 1; return root.

    ``classes`` writes ``root/classes.txt``. Masks are greyscale for even scenes and VOC-palette PNGs for odd.
    """
    root = Path(root)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for number, scene in enumerate(scenes):
        draw(scene, mode).save(root / "images" / f"{scene.name}.png")
        mask = Image.fromarray(class_mask(scene, offset=1))
        if number % 2:
            mask = mask.convert("P")
            mask.putpalette(voc_palette())
        mask.save(root / "masks" / f"{scene.name}.png")
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


MVTEC_DEFECTS = ("scratch", "crack")  # written unsorted: labels follow sorted names
MVTEC_DEFECT = Rect(0, 6, 4, 14, 9)  # where every defect image is damaged


def write_mvtec(
    root: str | Path,
    category: str = "bottle",
    mode: str = "RGB",
    n_train: int = 3,
    n_test_good: int = 2,
    n_per_defect: int = 2,
) -> Path:
    """Write one MVTec AD category folder ``root/<category>`` and return it.

    Good images are plain noise; defect images carry ``MVTEC_DEFECT`` and a mask of it (255 inside).
    """
    folder = Path(root) / category
    plain = Scene("good", 24, 16, ())
    damaged = Scene("defect", 24, 16, (MVTEC_DEFECT,))
    for split, kind, count in (("train", "good", n_train), ("test", "good", n_test_good)):
        (folder / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw(plain, mode, seed=i).save(folder / split / kind / f"{i:03d}.png")
    for defect in MVTEC_DEFECTS:
        for sub in (f"test/{defect}", f"ground_truth/{defect}"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_defect):
            draw(damaged, mode, seed=i).save(folder / "test" / defect / f"{i:03d}.png")
            mask = Image.fromarray(class_mask(damaged, offset=255))
            mask.save(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return folder
