"""A small SVG builder: elements are built by functions, attributes and text are escaped once,
when the tree is rendered.  Nothing here concatenates markup by hand.

``el("rect", x=1, y=2, class_="a")`` makes an element (``class_`` → ``class``, other ``_`` →
``-``); ``None`` attributes are left out; floats are rounded to one decimal so a diagram stays
small.  ``render(node)`` returns :class:`markupsafe.Markup`, safe to put into a Jinja template.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

AttrValue = str | int | float | None


@dataclass(slots=True)
class Node:
    tag: str
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)

    def add(self, *children: Node | str | None) -> Node:
        for child in children:
            if child is not None:
                self.children.append(child)
        return self

    def extend(self, children: Iterable[Node | str | None]) -> Node:
        return self.add(*children)


def _name(key: str) -> str:
    if key == "class_":
        return "class"
    if key.startswith("xlink_"):
        return "xlink:" + key[6:]
    return key.rstrip("_").replace("_", "-")


def _value(value: int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.1f}"
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def el(tag: str, *children: Node | str | None, **attrs: AttrValue) -> Node:
    node = Node(tag, {_name(k): v for k, v in attrs.items() if v is not None})
    return node.add(*children)


def _render(node: Node | str, out: list[str]) -> None:
    if isinstance(node, str):
        out.append(escape(node, quote=False))
        return
    out.append("<" + node.tag)
    for key, value in node.attrs.items():
        if value is None:
            continue
        out.append(f' {key}="{escape(_value(value), quote=True)}"')
    if not node.children:
        out.append("/>")
        return
    out.append(">")
    for child in node.children:
        _render(child, out)
    out.append(f"</{node.tag}>")


def render(node: Node) -> Markup:
    out: list[str] = []
    _render(node, out)
    return Markup("".join(out))  # every attribute and text node was escaped above


# -- shapes ------------------------------------------------------------------------------------
def svg(width: float, height: float, *children: Node | None, **attrs: AttrValue) -> Node:
    return el(
        "svg",
        *children,
        xmlns="http://www.w3.org/2000/svg",
        width=width,
        height=height,
        viewBox=f"0 0 {_value(width)} {_value(height)}",
        **attrs,
    )


def title(text: str) -> Node:
    """A tooltip (the browser shows it on hover)."""
    return el("title", text)


def rect(
    x: float, y: float, width: float, height: float, *children: Node | None, **attrs: AttrValue
) -> Node:
    return el("rect", *children, x=x, y=y, width=width, height=height, **attrs)


def line(x1: float, y1: float, x2: float, y2: float, **attrs: AttrValue) -> Node:
    return el("line", x1=x1, y1=y1, x2=x2, y2=y2, **attrs)


def text(x: float, y: float, content: str, **attrs: AttrValue) -> Node:
    return el("text", content, x=x, y=y, **attrs)


def circle(cx: float, cy: float, r: float, *children: Node | None, **attrs: AttrValue) -> Node:
    return el("circle", *children, cx=cx, cy=cy, r=r, **attrs)


def path(d: str, **attrs: AttrValue) -> Node:
    return el("path", d=d, **attrs)


def group(*children: Node | None, **attrs: AttrValue) -> Node:
    return el("g", *children, **attrs)


def link(href: str, *children: Node | None, **attrs: AttrValue) -> Node:
    return el("a", *children, href=href, **attrs)


#: Rough advance width of one character at ``size`` px in the report's sans-serif font; used to
#: fit labels (a little generous so text never overflows the box it was measured for).
def text_width(content: str, size: float = 12.0) -> float:
    return len(content) * size * 0.6


def clip(content: str, width: float, size: float = 12.0) -> str:
    """``content`` shortened with an ellipsis to fit ``width`` px."""
    fits = int(width / (size * 0.6))
    if len(content) <= fits:
        return content
    return content[: max(fits - 1, 1)] + "…"


#: Advance widths (em) of a proportional sans-serif, on the wide side: DejaVu Sans (what headless
#: Chromium falls back to on Linux) is wider than Segoe UI, Roboto or Noto Sans, so a label
#: sized with these fits in any of them.
_WIDE = set("MWmw@%")
_CAPS_WIDE = set("ABCDEGHKNOQRSUVXYZ+=#&~<>")
_NARROW = set("fijlrtI.,:;'|!()[] /-")


def sans_width(content: str, size: float = 12.0) -> float:
    """An upper estimate of ``content``'s width in px, in a proportional sans-serif font."""
    total = 0.0
    for char in content:
        if char in _WIDE:
            total += 1.0
        elif char in _CAPS_WIDE:
            total += 0.78
        elif char in _NARROW:
            total += 0.4
        elif char.isupper():
            total += 0.7
        else:
            total += 0.64
    return total * size


def mono_width(content: str, size: float = 12.0) -> float:
    """``content``'s width in a monospace font (DejaVu Sans Mono advances 0.602 em)."""
    return len(content) * size * 0.61
