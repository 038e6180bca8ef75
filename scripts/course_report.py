"""The course's report: lessons as sections of tables, pictures and sentences with the numbers, read from
run folders, written as ``index.html`` (one file, its pictures embedded) and ``report.md``."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """A table of the report: a caption, column names and rows of cells."""

    caption: str
    header: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    """A picture of the report: a caption and its PNG bytes (a large one made smaller to embed)."""

    caption: str
    png: bytes

    def __post_init__(self) -> None:
        if len(self.png) > LARGE_PNG:
            self.png = smaller(self.png)


#: PNGs larger than this are scaled down for the report (photographs, grids of many detections)
LARGE_PNG = 300_000


def smaller(png: bytes, side: int = 1000) -> bytes:
    """The picture with its longer side at most ``side`` pixels, in 256 colours, as PNG."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail((side, side), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class Findings:
    """What a lesson's folders show: sentences with the numbers measured, tables and pictures."""

    measured: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


# --- reading run folders ---------------------------------------------------------------------------------


def metrics(run: Path) -> dict[str, Any]:
    """A run's metrics.json (empty when it wrote none)."""
    from cnnlab.runs import read_json

    return read_json(run / "metrics.json")


def number(value: Any, digits: int = 3) -> str:
    """A metric for a sentence: ``0.987``, or ``n/a`` when the run did not measure it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def tensorboard_images(run: Path) -> dict[str, bytes]:
    """The last picture of each image tag in a run's TensorBoard event files, as PNG bytes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, tuple[float, bytes]] = {}
    for events in sorted(run.glob("tensorboard/**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("images", []):
            last = accumulator.Images(tag)[-1]
            if tag not in found or last.wall_time >= found[tag][0]:
                found[tag] = (last.wall_time, last.encoded_image_string)
    return {tag: png for tag, (_, png) in found.items()}


def run_figures(run: Path, wanted: dict[str, str]) -> list[Figure]:
    """The pictures of ``wanted`` (TensorBoard tag -> caption) that the run logged, in that order."""
    images = tensorboard_images(run) if run.is_dir() else {}
    return [Figure(caption, images[tag]) for tag, caption in wanted.items() if tag in images]


def png_figures(folder: Path, pattern: str, caption: str) -> list[Figure]:
    """The PNG files of ``folder`` matching ``pattern``, sorted by name."""
    return [Figure(caption, p.read_bytes()) for p in sorted(folder.glob(pattern))]


def metric_table(caption: str, runs: dict[str, Path], keys: list[str]) -> Table:
    """One row per run (by its label) with the metrics ``keys`` from its metrics.json."""
    return Table(
        caption, ["run", *keys], [[label, *(metrics(p).get(k) for k in keys)] for label, p in runs.items()]
    )


def csv_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV file written by cnnlab (a sweep's results.csv, cnnlab-models' models.csv), with
    its numbers as numbers."""
    with path.open(newline="") as file:
        return [{k: _parsed(v) for k, v in row.items()} for row in csv.DictReader(file)]


def _parsed(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --- writing ---------------------------------------------------------------------------------------------


@dataclass
class Section:
    """A lesson as the report shows it: what the course claims, how it went, what it measured, how to
    run it again."""

    name: str
    title: str
    claim: str
    record: dict[str, Any]  # the lesson's lesson.json: status, seconds, error, the commands it ran
    findings: Findings
    rerun: str
    problem: str | None = None  # why its results could not be read

    @property
    def status(self) -> str:
        """done, failed, or unknown."""
        return str(self.record.get("status", "unknown"))

    @property
    def commands(self) -> list[str]:
        """The course command for this lesson, then the commands it ran."""
        return [self.rerun, *self.record.get("commands", [])]

    @property
    def problems(self) -> list[str]:
        """Its error and why its results could not be read, where there are."""
        found = [self.record.get("error"), self.problem and f"nothing to read: {self.problem}"]
        return [p for p in found if p]


def cell(value: Any) -> str:
    """A table cell: numbers rounded for reading, nothing for a value not measured."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)  # years stay 2015
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 10000 else f"{value:,.0f}"
    return str(value)


def html_section(number_: int, section: Section) -> str:
    """One lesson as HTML: heading, status, errors, claim, measurements, tables, pictures, commands."""
    parts = [
        f'<h2 id="{section.name}">{number_}. {html.escape(section.title)}</h2>',
        f'<p class="meta"><span class="{section.status}">{section.status}</span> in '
        f"{section.record.get('seconds', '?')} s</p>",
        *(f'<p class="error">{html.escape(p)}</p>' for p in section.problems),
        f"<h3>What the course claims</h3><p>{html.escape(section.claim)}</p>",
    ]
    if section.findings.measured:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in section.findings.measured)
        parts.append(f"<h3>What this run measured</h3><ul>{items}</ul>")
    parts += [html_table(table) for table in section.findings.tables]
    parts += [html_figure(figure) for figure in section.findings.figures]
    parts.append("<h3>Re-run this section</h3><pre>" + html.escape("\n".join(section.commands)) + "</pre>")
    return "\n".join(parts)


def html_table(table: Table) -> str:
    """A table as HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return f"<table><caption>{html.escape(table.caption)}</caption><tr>{head}</tr>{body}</table>"


def html_figure(figure: Figure) -> str:
    """A picture as an HTML figure, its PNG embedded."""
    data = base64.b64encode(figure.png).decode()
    width = int.from_bytes(figure.png[16:20], "big")  # the PNG header's width
    # small pictures (a grid of 16 px digits) enlarged, pixel for pixel, so that a person can see them
    style = f' style="width: {width * (360 // width)}px"' if 0 < width < 180 else ""
    caption = html.escape(figure.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}"{style}>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
caption { text-align: left; font-style: italic; padding-bottom: 0.3em; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
img { max-width: 520px; border: 1px solid #eee; image-rendering: pixelated; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
.done { color: #1a7f37; font-weight: bold; } .failed { color: #c00; font-weight: bold; }
.error { color: #c00; } .meta { color: #666; }
"""


def write_html(out: Path, sections: Sequence[Section], title: str) -> Path:
    """index.html: one file, its pictures embedded, so that it can be mailed or opened anywhere."""
    rows = "".join(
        f'<tr><td><a href="#{s.name}">{html.escape(s.title)}</a></td><td class="{s.status}">{s.status}</td>'
        f"<td>{s.record.get('seconds')} s</td></tr>"
        for s in sections
    )
    body = "\n".join(html_section(i, s) for i, s in enumerate(sections, 1))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table><tr><th>lesson</th><th>status</th><th>time</th></tr>{rows}</table>\n{body}</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page)
    return path


def markdown_section(number_: int, section: Section, out: Path) -> list[str]:
    """One lesson as Markdown; its pictures are written beside, into ``out/figures/``."""
    lines = [
        f"## {number_}. {section.title}",
        "",
        f"**{section.status}** in {section.record.get('seconds')} s",
        "",
    ]
    lines += [line for p in section.problems for line in (f"> {p}", "")]
    lines += ["What the course claims: " + section.claim, ""]
    lines += [f"- {m}" for m in section.findings.measured] + ([""] if section.findings.measured else [])
    for table in section.findings.tables:
        lines += [
            f"*{table.caption}*",
            "",
            "| " + " | ".join(table.header) + " |",
            "|---" * len(table.header) + "|",
        ]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows] + [""]
    for k, figure in enumerate(section.findings.figures):
        path = out / "figures" / f"{section.name}_{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(figure.png)
        lines += [f"![{figure.caption}]({path.relative_to(out)})", ""]
    return lines + ["Re-run this section:", "", *(f"    {c}" for c in section.commands), ""]


def write_pages(out: Path, sections: Sequence[Section], title: str) -> tuple[Path, Path]:
    """``index.html`` and ``report.md`` (with its pictures in ``figures/``) in ``out``."""
    for old in (out / "figures").glob("*.png"):  # the pictures of an earlier report of this folder
        old.unlink()
    lines = [f"# {title}", ""]
    for i, section in enumerate(sections, 1):
        lines += markdown_section(i, section, out)
    markdown = out / "report.md"
    markdown.write_text("\n".join(lines))
    return write_html(out, sections, title), markdown
