"""One self-contained HTML page (inline CSS, PNGs embedded as data URIs, no network) from sections.

The page marks itself once loaded: ``<body data-images-ok="k/n">`` counts the embedded images that
decoded, so a headless browser can check the page without looking at it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:1em 2em;
color:#1b1f24;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em} table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right} th{background:#f3f5f7} td:first-child,th:first-child{text-align:left}
figure{margin:.8em 0} figure img{max-width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.85em;color:#57606a}
p.note{color:#57606a;font-size:.9em}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
});
"""


@dataclass(frozen=True, kw_only=True)
class Section:
    id: str
    heading: str
    text: str = ""
    table: list[dict] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4f}"  # NaN (an empty group) shows as an empty cell
    return html.escape(str(v))


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.heading)}</a>' for s in sections)
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="generator" content="salt-exp">'
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(subtitle)}</p><nav>{nav}</nav>"]
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.heading)}</h2>')
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        parts.append(_table(s.table))
        parts.extend(_figure(p, c) for p, c in s.figures)
        parts.append("</section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)
