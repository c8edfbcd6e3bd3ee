"""The demo report's HTML page: its markdown, tables as tables, pictures inlined as base64 (one file to share)."""

from __future__ import annotations

import base64
from pathlib import Path


def html_page(md: str, pictures: dict[str, Path]) -> str:
    """The report's markdown as one HTML page; `pictures` maps each picture's name (its alt text) to its file."""
    html = ["<!doctype html><meta charset='utf-8'><title>GvU report</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}</style>"]
    table: list[str] = []
    for line in md.splitlines() + [""]:
        if table and not line.startswith("|"):
            html.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("# "):
            html.append(f"<h1>{line[2:]}</h1>")
        elif line.startswith("## "):
            html.append(f"<h2>{line[3:]}</h2>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [x.strip().replace("**", "") for x in line.strip("|").split("|")]
            tag = "th" if not table else "td"
            table.append("<tr>" + "".join(f"<{tag}>{x}</{tag}>" for x in cells) + "</tr>")
        elif line.startswith("!["):
            name = line[2:line.index("]")]
            data = base64.b64encode(Path(pictures[name]).read_bytes()).decode()
            html.append(f"<img alt='{name}' style='max-width:100%' src='data:image/png;base64,{data}'>")
        elif line:
            html.append(f"<p>{line.replace('**', '')}</p>")
    return "\n".join(html) + "\n"
