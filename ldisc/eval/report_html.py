"""The report's HTML: rendered from its Markdown, as one self-contained file.

The Markdown is the one source of the report's content; this module renders the subset the report
writes (headings, pipe tables, bullet lists, paragraphs, image lines, ``**bold**`` and ```code```),
so the HTML shows what the Markdown shows, bold included. Every image is embedded as a ``data:`` URI:
the file opens anywhere without the folder beside it, and never links outside it.
"""
from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child"
         "{text-align:left}.row{display:flex;flex-wrap:wrap;gap:6px}figure{margin:4px}"
         "figure img{min-width:256px;image-rendering:pixelated}figcaption{font-size:75%}code{font-size:90%}")


def data_uri(path: Path) -> str:
    """The file's bytes as a ``data:`` URI."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _figures(line: str, base: Path) -> str:
    figs = []
    for alt, src in IMAGE.findall(line):
        path = (base / src).resolve()
        if not path.is_file() or not path.is_relative_to(base.resolve()):
            raise ValueError(f"report image {src!r} is not a file inside {base}")
        figs.append(f'<figure><img src="{data_uri(path)}" alt="{html.escape(alt)}">'
                    f"<figcaption>{html.escape(alt)}</figcaption></figure>")
    return "<div class='row'>" + "".join(figs) + "</div>"


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [c for c in cells[1:] if not all(set(x) <= set("-: ") for x in c)]
    out = "<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
    out += "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return out + "</table>"


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """One HTML document from the report's Markdown; images (paths relative to ``base``) embedded."""
    parts: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            parts.append(_table(lines[i:j]))
            i = j
            continue
        if line.startswith("- "):
            j = i
            while j < len(lines) and lines[j].startswith("- "):
                j += 1
            parts.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in lines[i:j]) + "</ul>")
            i = j
            continue
        heading = re.match(r"(#{1,4}) (.*)", line)
        if heading:
            n = len(heading.group(1))
            parts.append(f"<h{n}>{_inline(heading.group(2))}</h{n}>")
        elif IMAGE.search(line):
            parts.append(_figures(line, base))
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
