"""Headless Chromium (Debian's `chromium`) for the dashboard's tests: a page's DOM after it ran, and screenshots.

`dom()` parses what `--dump-dom` prints into a small tree to assert on (stdlib html.parser, no new dependency).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
MISSING = None if CHROMIUM else "no chromium on PATH: `make install` installs Debian's (apt-get install chromium)"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def chromium(*args: str, timeout: float = 90) -> str:
    """Run headless Chromium with `args` in a fresh profile; its stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, size: str = "1280,900") -> Path:
    """A PNG of `url` as Chromium renders it."""
    chromium(f"--screenshot={path}", f"--window-size={size}", url)
    return path


@dataclass(eq=False)
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # this element's text and its descendants', in order

    def text(self) -> str:
        return " ".join("".join(self.texts).split())

    def all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with this tag and these attributes (`class_` matches one class among several)."""
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(matches(child, name, value) for name, value in attrs.items()):
                found.append(child)
            found.extend(child.all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


def matches(element: Element, name: str, value: str) -> bool:
    if name == "class_":
        return value in element.attrs.get("class", "").split()
    return element.attrs.get(name.replace("_", "-")) == value


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.open = [self.root]

    def handle_starttag(self, tag, attrs) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(element)
        if tag not in VOID:
            self.open.append(element)

    def handle_startendtag(self, tag, attrs) -> None:
        self.open[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag) -> None:
        for depth in range(len(self.open) - 1, 0, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data) -> None:
        for element in self.open:
            element.texts.append(data)


def dom(url: str) -> Element:
    """The page at `url` as Chromium has it after loading (scripts, if any, have run)."""
    builder = TreeBuilder()
    builder.feed(chromium("--dump-dom", url))
    builder.close()
    return builder.root
