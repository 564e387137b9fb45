"""The report page: self-contained, one picture per thing the issue asks for, every catalogue cell
linked to an existing diagram, small enough for all five presets."""

from __future__ import annotations

import json
import re

from vbsim.attacks.catalogue import SCENARIOS, by_id
from vbsim.attacks.model import PRESET_ORDER
from vbsim.attacks.runner import run
from vbsim.report import Report
from vbsim.report.data import anchor, collect
from vbsim.report.html import render_report

from .conftest import Page

MAX_BYTES = 5_000_000


def test_the_page_is_self_contained(full_report: Report) -> None:
    html = full_report.html
    page = Page(html)
    assert html.startswith("<!doctype html>")
    # No fetches: no external scripts, stylesheets, images, fonts or frames.
    for tag, attrs in page.tags:
        assert tag not in ("link", "img", "iframe", "object", "embed") or (
            tag == "link" and attrs.get("href", "").startswith("data:")
        ), (tag, attrs)
        if tag == "script":
            assert attrs.get("type") == "application/json" and "src" not in attrs
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name, "")
            assert not re.match(r"(?i)(https?:|//|file:)", value), (tag, attrs)
    assert "@import" not in html
    assert not re.search(r"url\((?!#|data:)", html)
    assert full_report.size <= MAX_BYTES, full_report.size


def test_every_catalogue_cell_links_to_its_diagram(full_report: Report) -> None:
    page = Page(full_report.html)
    ids = set(page.ids)
    assert len(ids) == len(page.ids), "ids are unique"
    cells = [attrs["href"] for attrs in page.with_class("runlink", "a")]
    assert len(cells) == len(SCENARIOS) * len(PRESET_ORDER)
    for href in cells:
        assert href.startswith("#") and href[1:] in ids, href
    for href, _ in page.links:
        if href.startswith("#"):
            assert href[1:] in ids, href


def test_one_picture_of_each_kind_per_preset(full_report: Report) -> None:
    page = Page(full_report.html)
    for css in ("machine", "memory", "boot"):
        assert len(page.with_class(css, "svg")) == len(PRESET_ORDER), css
    matrices = page.with_class("matrix", "div")
    assert [m["data-preset"] for m in matrices] == list(PRESET_ORDER)
    assert len(page.with_class("mcell", "div")) == 16 * len(PRESET_ORDER)
    runs = full_report.data.runs
    drawn = [r for r in runs.values() if r.diagram is not None]
    assert len(page.with_class("seq", "svg")) == len(drawn)


def test_the_embedded_data_is_the_json_outputs(full_report: Report) -> None:
    html = full_report.html
    blob = html.split('<script type="application/json" id="vbsim-data">')[1].split("</script>")[0]
    data = json.loads(blob)
    assert [p["name"] for p in data["presets"]] == list(PRESET_ORDER)
    vbs = data["presets"][1]
    assert vbs["matrix"]["areas"] == ["VTL0 user", "VTL0 kernel", "VTL1 user", "VTL1 kernel"]
    assert len(vbs["matrix"]["cells"]) == 16
    assert any(p["name"] == "LsaIso.exe" and p["trustlet_id"] == 1 for p in vbs["processes"])
    assert {run["owner"] for run in vbs["memory"]} >= {"securekernel", "free"}
    assert len(data["catalogue"]["results"]) == len(SCENARIOS) * len(PRESET_ORDER)


def test_runs_match_the_catalogue(full_report: Report) -> None:
    """Each cell is that run's own result (the report runs every scenario once per preset)."""
    scenario = by_id("A1")
    assert scenario is not None
    for name in ("vbs", "vbs-off"):
        expected, _ = run(scenario, name)
        got = full_report.data.run_for("A1", name).result
        assert (got.outcome, got.mechanism) == (expected.outcome, expected.mechanism)
    cell = full_report.data.run_for("A1", "vbs")
    assert cell.anchor == anchor("A1", "vbs") == "run-A1--vbs"
    assert cell.diagram is not None and cell.diagram.decisive_seq is not None
    assert full_report.data.run_for("A1", "vbs-off").diagram is None  # n/a: nothing to draw


def test_a_subset_renders_with_its_own_presets() -> None:
    scenarios = [s for s in SCENARIOS if s.id in ("A1", "A20")]
    data = collect(["hardened", "vbs"], scenarios)
    html = render_report(data)
    page = Page(html)
    assert [m["data-preset"] for m in page.with_class("matrix", "div")] == ["hardened", "vbs"]
    assert len(page.with_class("runlink", "a")) == 4
    assert "<b>hardened</b>, <b>vbs</b>" in html
