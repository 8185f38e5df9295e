"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML file.

Both renderings come from the same blocks, so report.md and report.html cannot disagree.
Inline markup is the small Markdown subset `**bold**` and `` `code` ``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from pathlib import Path

from aftt_tf import io_utils


@dataclasses.dataclass
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass
class Paragraph:
    text: str


@dataclasses.dataclass
class BulletList:
    items: list[str]


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclasses.dataclass
class Figure:
    path: str  # Relative to the report's directory.
    caption: str


@dataclasses.dataclass
class Code:
    text: str


Block = Heading | Paragraph | BulletList | Table | Figure | Code


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, BulletList):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = []
            if block.caption:
                lines.append(block.caption)
                lines.append("")
            lines.append("| " + " | ".join(_markdown_cell(h) for h in block.headers) + " |")
            lines.append("|" + "|".join("---" for _ in block.headers) + "|")
            for row in block.rows:
                lines.append("| " + " | ".join(_markdown_cell(cell) for cell in row) + " |")
            parts.append("\n".join(lines))
        elif isinstance(block, Figure):
            parts.append(f"![{block.caption}]({block.path})\n\n*{block.caption}*")
        elif isinstance(block, Code):
            parts.append(f"```\n{block.text}\n```")
        else:
            raise TypeError(f"Unknown report block {block!r}")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; }
figcaption { font-style: italic; font-size: 0.92em; }
code, pre { background: #f4f4f4; padding: 0 0.2em; }
pre { padding: 0.6em; overflow-x: auto; }
"""


def to_html(blocks: list[Block], title: str, base_dir: Path) -> str:
    """One HTML file with every figure embedded as a data URI (no external files)."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, BulletList):
            items = "".join(f"<li>{_inline_html(item)}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            caption = f"<caption>{_inline_html(block.caption)}</caption>" if block.caption else ""
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>"
                for row in block.rows
            )
            body.append(
                f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            )
        elif isinstance(block, Figure):
            content = base64.b64encode((base_dir / block.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{content}"><figcaption>'
                f"{_inline_html(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            body.append(f"<pre>{html.escape(block.text)}</pre>")
        else:
            raise TypeError(f"Unknown report block {block!r}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(blocks: list[Block], directory: Path, title: str) -> tuple[Path, Path]:
    """Writes directory/report.md and directory/report.html atomically."""
    markdown_path, html_path = directory / "report.md", directory / "report.html"
    io_utils.write_text(html_path, to_html(blocks, title, directory))
    io_utils.write_text(markdown_path, to_markdown(blocks))
    return markdown_path, html_path
