"""The full report (all five presets, every scenario) is built once per test session."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from vbsim.report import Report, build_report


@pytest.fixture(scope="session")
def full_report() -> Report:
    return build_report()


@pytest.fixture(scope="session")
def full_report_file(full_report: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(full_report.html, encoding="utf-8")
    return path


class Page(HTMLParser):
    """What the tests look at in a page: ids, links, tags with their attributes."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.links: list[tuple[str, dict[str, str]]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if "id" in values:
            self.ids.append(values["id"])
        if tag == "a" and "href" in values:
            self.links.append((values["href"], values))

    def with_class(self, css: str, tag: str | None = None) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.tags
            if (tag is None or name == tag) and css in attrs.get("class", "").split()
        ]
