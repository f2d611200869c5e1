"""Small HTML building blocks for self-contained report pages (no external resources)."""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Iterable, Sequence

from legseg_tf.labels import BY_INDEX, report_color_hex

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
h1 { font-size: 1.5em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
h3 { font-size: 1.1em; margin-top: 1.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
img.figure { max-width: 100%; border: 1px solid #ddd; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85em; margin: 0.4em 0; }
.legend span.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #555;
  margin-right: 4px; vertical-align: middle; }
ul.warnings li { color: #a40000; } .ok { color: #176317; }
.note { font-size: 0.85em; color: #555; }
nav a { margin-right: 1em; }
.qc-box { border: 2px solid #999; border-radius: 4px; padding: 0.3em 1em 0.6em; margin: 1em 0; }
.qc-box h2 { margin-top: 0.3em; } .qc-box ul { margin: 0.2em 0; }
.qc-fail { color: #a40000; } .qc-warning { color: #8a5300; }
.qc-severity { font-weight: bold; } .qc-image { font-weight: bold; margin: 0.5em 0 0.1em; }
.model-box { border: 2px solid #4a6fa5; border-radius: 4px; padding: 0.3em 1em 0.6em;
  margin: 0.8em 0; background: #f6f8fc; }
.model-box h3 { margin-top: 0.3em; } .model-box dt { font-weight: bold; margin-top: 0.4em; }
.model-box dd { margin-left: 1.2em; } .model-box ul { margin: 0.1em 0; padding-left: 1.2em; }
.verdict { font-weight: bold; margin: 0.3em 0; } .verdict.disagree { color: #a40000; }
details > summary { cursor: pointer; color: #1a4c8a; margin: 0.3em 0; }
.figures { display: flex; flex-direction: column; gap: 0.6em; }
a.zoom-open { display: block; cursor: zoom-in; }
.zoom a.zoom-close { display: none; }
.zoom:target { position: fixed; top: 0; left: 0; right: 0; bottom: 0; z-index: 10;
  overflow: auto; background: rgba(20, 20, 20, 0.92); padding: 2.5em 1em 1em; }
.zoom:target a.zoom-open { cursor: default; }
.zoom:target img { max-width: none; border: 0; }
.zoom:target a.zoom-close { display: block; position: fixed; top: 0.5em; right: 1.5em;
  color: #fff; font-weight: bold; font-size: 1.1em; }
"""


class Raw(str):
    """Text that is already HTML: :func:`key_values` and :func:`table` insert it unescaped."""


def page(title: str, body: str) -> str:
    """A complete HTML5 document with the shared style sheet."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def data_uri(png: bytes) -> str:
    """PNG bytes as a base64 ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_img(png: bytes, alt: str, css_class: str = "figure", attributes: str = "") -> str:
    """An <img> element embedding PNG bytes as a base64 data URI."""
    extra = f" {attributes}" if attributes else ""
    return f'<img class="{css_class}" alt="{escape(alt)}"{extra} src="{data_uri(png)}">'


def zoom_figure(png: bytes, alt: str, figure_id: str, attributes: str = "") -> str:
    """A figure shown at the page width that opens at its full resolution on a click.

    No script and one copy of the image: the image links to its own box, which CSS
    ``:target`` then shows fixed over the page with the image at its natural size
    (scrollable); "close" targets the outer anchor, so the page stays where it was. Works
    from a local file without any network. (Chromium refuses to open a ``data:`` URI as a
    page, so a plain link to the image would not.)
    """
    anchor, box = escape(figure_id), escape(figure_id + "-full")
    extra = f" {attributes}" if attributes else ""
    return (
        f'<div class="zoomable" id="{anchor}"><div class="zoom" id="{box}">'
        f'<a class="zoom-open" href="#{box}" title="click to enlarge">'
        f'<img class="figure" alt="{escape(alt)}"{extra} src="{data_uri(png)}"></a>'
        f'<a class="zoom-close" href="#{anchor}">close</a></div></div>'
    )


def link(href: str, text: str | None = None) -> Raw:
    """An ``<a href>`` to a relative path (escaped), as :class:`Raw` HTML."""
    return Raw(f'<a href="{escape(href)}">{escape(text if text is not None else href)}</a>')


def format_value(value) -> str:
    """Table cell text: floats with 4 significant digits, NaN/None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def _cell(value) -> str:
    """Cell HTML: :class:`Raw` as it is, anything else formatted and escaped."""
    return value if isinstance(value, Raw) else escape(format_value(value))


def table(
    rows: Sequence[dict],
    columns: Sequence[str],
    text_columns: Iterable[str] = (),
    css_class: str = "",
) -> str:
    """An HTML table of ``rows`` (dicts) restricted to ``columns``."""
    text = set(text_columns)
    head = "".join(f'<th class="{"text" if c in text else ""}">{escape(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"text" if c in text else ""}">{_cell(row.get(c))}</td>'
            for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    attribute = f' class="{css_class}"' if css_class else ""
    return (
        f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def legend(label_values: Iterable[int]) -> str:
    """Colour legend of label values (report colours and English names), one item per label."""
    items = []
    for value in sorted(set(int(v) for v in label_values)):
        entry = BY_INDEX.get(value)
        colour = report_color_hex(value)
        name = (f"{entry.abbreviation} {entry.display_full_name}" if entry
                else f"unknown label {value}")
        items.append(
            f'<span class="item" data-label="{value}"><span class="swatch" '
            f'style="background:{colour}"></span>{value} {escape(name)}</span>'
        )
    return f'<div class="legend">{"".join(items)}</div>'


def bullet_list(items: Sequence[str], css_class: str = "") -> str:
    """An unordered list of plain-text items (escaped)."""
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<ul{attribute}>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    """A two-column table of key/value pairs."""
    rows = "".join(
        f'<tr><th class="text">{escape(k)}</th>'
        f'<td class="text">{_cell(v)}</td></tr>'
        for k, v in pairs
    )
    return f"<table>{rows}</table>"
