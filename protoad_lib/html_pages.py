"""A run's executed notebooks as static HTML pages with an index, for people who read rather than run."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .atomic import write_text_atomically

if TYPE_CHECKING:
    from .run import NotebookResult


def write_html_report(results: Sequence[NotebookResult], html_dir: Path, profile: str) -> Path:
    """Each executed notebook as a static HTML page (figures embedded) and an ``index.html`` linking them."""
    from nbconvert import HTMLExporter
    import nbformat

    html_dir = Path(html_dir)
    exporter = HTMLExporter()
    rows = []
    for result in results:
        page, _ = exporter.from_notebook_node(nbformat.read(result.executed_path, as_version=4))
        target = html_dir / f"{result.name}.html"
        write_text_atomically(target, page)
        rows.append(f'<li><a href="{html.escape(target.name)}">{html.escape(result.name)}</a> '
                    f"({result.seconds:.0f} s)</li>")
    index = html_dir / "index.html"
    body = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ProtoAD replication: {html.escape(profile)} "
            f"profile</title></head><body><h1>ProtoAD replication, {html.escape(profile)} profile</h1>"
            f"<p>The executed notebooks of this run, in order:</p><ol>{''.join(rows)}</ol></body></html>\n")
    write_text_atomically(index, body)
    return index
