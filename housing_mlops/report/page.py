"""What a report is made of: sections of blocks, built by ``report.sections`` and turned
into HTML and Markdown by ``report.render``.

The one data structure both sides share, below them both: the builders never depend on how
a page is drawn, and the renderer on how a section was gathered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Block:
    """One piece of a section; which fields are set depends on ``kind``."""

    kind: str  # text | note | heading | table | image
    text: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    name: str = ""  # image file name in report_files/
    png: bytes = b""
    alt: str = ""


@dataclass
class Section:
    """One report section, rendered twice (HTML and Markdown) from the same blocks."""

    key: str
    title: str
    status: str = "ok"  # ok | empty | error
    blocks: list[Block] = field(default_factory=list)

    def text(self, value: str) -> Section:
        self.blocks.append(Block("text", text=value))
        return self

    def note(self, value: str) -> Section:
        self.blocks.append(Block("note", text=value))
        return self

    def heading(self, value: str) -> Section:
        self.blocks.append(Block("heading", text=value))
        return self

    def table(self, rows: list[dict[str, Any]], columns: list[str]) -> Section:
        self.blocks.append(Block("table", rows=rows, columns=columns))
        return self

    def image(self, name: str, png: bytes, alt: str) -> Section:
        self.blocks.append(Block("image", name=name, png=png, alt=alt))
        return self

    @property
    def images(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "image"]
