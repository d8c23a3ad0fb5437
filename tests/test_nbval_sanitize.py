"""The nbval sanitisers mask exactly PRN's trained rows, whose last digits depend on the CPU, and nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sanitisers() -> list[tuple[str, str]]:
    """The (regex, replacement) pairs of tests/nbval_sanitize.cfg, read as nbval reads them."""
    text = (ROOT / "tests" / "nbval_sanitize.cfg").read_text()
    return re.findall("^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)


def sanitise(text: str) -> str:
    for regex, replacement in sanitisers():
        text = re.sub(regex, replacement, text)
    return text


def output_texts(notebook: str, source_start: str) -> list[tuple[str, str]]:
    """(kind, text) of the text/plain and text/html outputs of the committed code cell whose source starts
    with `source_start`."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    (cell,) = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).startswith(source_start)]
    data = [output["data"] for output in cell["outputs"] if "data" in output]
    return [(kind, "".join(d[kind])) for d in data for kind in ("text/plain", "text/html") if kind in d]


RESULTS = ("05_evaluation_mvtec_btad.ipynb", "evaluation = evaluate_run(run)")
SUMMARY = ("07_ablations.ipynb", "summary = av.ablation_summary")
PRN_ROW = {"text/plain": r"(?m)^.*(?:PRN \(trained|\sprn\s).*$",
           "text/html": r"(?s)<tr>(?:(?!</tr>).)*?(?:PRN \(trained|<td>prn</td>)(?:(?!</tr>).)*?</tr>"}


@pytest.mark.parametrize("where", [RESULTS, SUMMARY])
def test_a_change_in_a_trained_prn_number_is_masked(where):
    for kind, text in output_texts(*where):
        prn_rows = re.findall(PRN_ROW[kind], text)
        assert len(prn_rows) >= 3, f"the committed {kind} output has PRN's rows"
        changed = text.replace(prn_rows[0], re.sub(r"0\.(\d)\d{3}", r"0.\g<1>999", prn_rows[0]))
        assert changed != text
        assert sanitise(changed) == sanitise(text)


@pytest.mark.parametrize("where", [RESULTS, SUMMARY])
def test_a_change_in_any_other_row_is_still_compared(where):
    for kind, text in output_texts(*where):
        first_prn_row = re.search(PRN_ROW[kind], text).start()
        other = re.search(r"0\.99\d\d", text)
        assert other.start() < first_prn_row, "a number of another method comes first"
        changed = text[: other.start()] + "0.9800" + text[other.end() :]
        assert sanitise(changed) != sanitise(text)
