"""The SVG builder escapes every attribute and text node; nothing else builds markup."""

from __future__ import annotations

from markupsafe import Markup

from vbsim.report.svg import clip, el, group, rect, render, svg, text, title


def test_text_and_attributes_are_escaped() -> None:
    node = group(
        title('<script>alert("x")</script>'),
        text(1, 2, "a < b & c > d", class_='x" onload="evil()'),
    )
    out = render(node)
    assert isinstance(out, Markup)
    assert "<script>" not in out
    assert "&lt;script&gt;" in out
    assert "a &lt; b &amp; c &gt; d" in out
    assert 'onload="evil()"' not in out
    assert 'class="x&quot; onload=&quot;evil()"' in out


def test_attribute_names_and_values() -> None:
    node = el("path", d="M0 0", class_="a", marker_end="url(#ah)", stroke_width=1.25, hidden=None)
    out = str(render(node))
    assert out == '<path d="M0 0" class="a" marker-end="url(#ah)" stroke-width="1.2"/>'
    assert str(render(rect(1.0, 2.5, 3, 4))) == '<rect x="1" y="2.5" width="3" height="4"/>'


def test_svg_root_has_namespace_and_view_box() -> None:
    out = str(render(svg(100, 50, text(0, 0, "hi"))))
    assert out.startswith('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"')
    assert 'viewBox="0 0 100 50"' in out
    assert out.endswith('<text x="0" y="0">hi</text></svg>')


def test_clip_fits_width() -> None:
    assert clip("short", 200) == "short"
    clipped = clip("a very long label that does not fit", 60)
    assert clipped.endswith("…") and len(clipped) < 20
