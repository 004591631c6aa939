"""What a generated HTML page holds, as the tests read it (``ebmctl report``, ``attack``,
``ood``, ``lyapunov`` and ``compare`` pages), collected in one pass of :mod:`html.parser`.

``read_page(html)`` gives a :class:`Page`: its tags, image sources, link targets, text and
tables; ``assert_self_contained(html)`` checks the promise every page makes, that it opens
offline: no external URL, every ``src`` an inline PNG and no links.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

#: an absolute or protocol-relative URL anywhere in a page (a page must fetch nothing)
EXTERNAL_URL = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", re.I)
INLINE_PNG = "data:image/png;base64,"


@dataclass
class Row:
    """One ``<tr>``: its cells' text (``<th>`` and ``<td>`` in order), its class attribute, and
    whether all its cells are ``<th>`` (a header row)."""

    cells: tuple[str, ...]
    cls: str = ""
    header: bool = False


@dataclass
class Table:
    """One ``<table>``: its class attribute, the class attributes of the elements it sits in
    (outermost first, e.g. ``("results",)`` for a table inside ``<div class="results">``), and
    its rows, header rows included."""

    cls: str = ""
    within: tuple[str, ...] = ()
    rows: list[Row] = field(default_factory=list)

    @property
    def body(self) -> list[tuple[str, ...]]:
        """The cells of every row that is not a header row."""
        return [r.cells for r in self.rows if not r.header]


@dataclass
class Page:
    tags: list[str] = field(default_factory=list)  # start tags, in document order
    images: list[str] = field(default_factory=list)  # every <img>'s src
    sources: list[str] = field(default_factory=list)  # every src, on any tag (images included)
    links: list[str] = field(default_factory=list)  # every href, on any tag
    texts: list[str] = field(default_factory=list)  # text nodes, as the parser met them
    tables: list[Table] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The page's text, text nodes joined by spaces."""
        return " ".join(self.texts)

    def table(self, cls: str) -> Table:
        """The one table of class ``cls`` or inside an element of that class; AssertionError
        unless there is exactly one."""
        found = [t for t in self.tables if cls == t.cls or cls in t.within]
        assert len(found) == 1, f"{len(found)} tables of class {cls!r}"
        return found[0]


#: elements that have no end tag, so never enclose anything
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._open: list[tuple[str, str]] = []  # (tag, class) of the elements open here
        self._row: list[str] | None = None
        self._row_cls, self._row_header = "", True
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.page.tags.append(tag)
        if "src" in a:
            self.page.sources.append(a["src"])
            if tag == "img":
                self.page.images.append(a["src"])
        if "href" in a:
            self.page.links.append(a["href"])
        if tag == "table":
            within = tuple(c for _, c in self._open if c)
            self.page.tables.append(Table(a.get("class", ""), within))
        elif tag == "tr" and self.page.tables:
            self._row, self._row_cls, self._row_header = [], a.get("class", ""), True
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._row_header = self._row_header and tag == "th"
        if tag not in _VOID:
            self._open.append((tag, a.get("class", "")))

    def handle_endtag(self, tag: str) -> None:
        if any(t == tag for t, _ in self._open):  # close it and whatever was left open in it
            while self._open.pop()[0] != tag:
                pass
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.page.tables[-1].rows.append(
                    Row(tuple(self._row), self._row_cls, self._row_header))
            self._row = None

    def handle_data(self, data: str) -> None:
        self.page.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)


def read_page(html: str) -> Page:
    """Everything :class:`Page` holds, from the page's HTML text."""
    c = _Collector()
    c.feed(html)
    c.close()
    return c.page


def assert_self_contained(html: str) -> Page:
    """Assert that the page opens offline (no external URL, every ``src`` an inline PNG, no
    links) and return it read."""
    assert not EXTERNAL_URL.search(html), EXTERNAL_URL.search(html)
    page = read_page(html)
    assert all(s.startswith(INLINE_PNG) for s in page.sources), [s[:40] for s in page.sources]
    assert not page.links, page.links
    return page
