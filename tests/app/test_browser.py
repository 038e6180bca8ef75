"""The page in a real browser: Debian's chromium, headless, driven by Playwright for Python (which downloads
no browser of its own here), against ``cnnlab-app`` started as a user starts it."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli.test_cli import write_digit_png
from PIL import Image

from app.test_api import serving

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    pytest.skip("Playwright for Python is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = next(
    (found for found in (shutil.which("chromium"), shutil.which("chromium-browser")) if found),
    "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None,
)
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary on PATH nor /usr/bin/chromium: apt-get install chromium (.ci/run does)",
        allow_module_level=True,
    )
#: headless, offline: no GPU, no sandbox (CI runs as root), nothing fetched in the background
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: sends a file of ``name`` from base64 ``data`` to the page as a drop on #drop or a paste (Ctrl+V)
SEND = """([how, name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "image/png"}));
  const event = how === "drop"
    ? new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true})
    : new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true});
  (how === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
}"""


@pytest.fixture(scope="module")
def app_url(classifier_export: Path) -> Iterator[str]:
    """The app serving the default classifier (tests/app/conftest.py), in a process of its own."""
    with serving(str(classifier_export)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, app_url: str) -> Iterator[Page]:
    """The app's page, its model described; fails the test on any script error in it."""
    opened = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    opened.on("pageerror", lambda err: errors.append(str(err)))
    opened.goto(app_url)
    expect(opened.locator("#model")).to_contain_text("classification · 10 classes (0, 1, 2")
    yield opened
    opened.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_png(tmp_path_factory.mktemp("upload") / "zero.png", size=(24, 30), index=0)


def test_a_chosen_digit_shows_its_class_on_top_and_a_text_file_the_servers_reason(
    page: Page, digit: Path, tmp_path: Path
) -> None:
    page.set_input_files("#file", digit)
    top = page.locator("#top li")
    expect(top).to_have_count(5)
    expect(top.first.locator(".label")).to_have_text("0")
    expect(top.first.locator(".pct")).to_have_text(re.compile(r"^\d{2,3}\.\d%$"))
    assert page.locator("#picture").get_attribute("src").startswith("data:image/png;base64,")
    expect(page.locator("#input-caption")).to_have_text("zero.png · 24 × 30 px")
    expect(page.locator("#note")).to_contain_text("no class activation map")
    expect(page.locator("#error")).to_be_hidden()

    notes = tmp_path / "notes.txt"
    notes.write_text("no pixels here\n")
    page.set_input_files("#file", notes)
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text(
        "notes.txt: not an image (no reader recognises its contents)"
    )
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0 and Image.open(shot).size[0] == 1100


def test_a_dropped_and_a_pasted_image_are_predicted(page: Page, digit: Path) -> None:
    data = base64.b64encode(digit.read_bytes()).decode("ascii")
    for how, name in (("drop", "dropped.png"), ("paste", "pasted.png")):
        page.evaluate(SEND, [how, name, data])
        expect(page.locator("#input-caption")).to_have_text(f"{name} · 24 × 30 px")
        expect(page.locator("#top li").first.locator(".label")).to_have_text("0")
