"""The one writer of camlab's markdown and CSV tables: a header, rows of cells, and column alignments.

Every report table (the lab's IoU table, the whole-test table, the methods, extractors,
semantic-segmentation and ablation tables, cross-validation, the benchmark) is written here, so
that escaping and layout are decided once.
"""
from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence

LEFT, RIGHT = "---", "---:"


def md_cell(text: object) -> str:
    """A cell's text for markdown: a bare '|' would split the cell."""
    return str(text).replace("|", "\\|")


def markdown(header: Sequence[object], rows: Iterable[Sequence[object]], align: Sequence[str] | None = None,
             spaced_rule: bool = False) -> str:
    """A markdown table, one line per row, ending in a newline.

    ``align``: one marker per column, :data:`LEFT` or :data:`RIGHT` (default: all left).
    ``spaced_rule``: the rule under the header written like a row (``| --- | ---: |``) rather
    than compactly (``|---|---:|``)."""
    header = list(header)
    align = list(align) if align is not None else [LEFT] * len(header)
    if len(align) != len(header):
        raise ValueError(f"{len(header)} columns but {len(align)} alignments")
    rule = ("| " + " | ".join(align) + " |") if spaced_rule else ("|" + "|".join(align) + "|")
    lines = [_row(header), rule] + [_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[object]) -> str:
    """``| a | b |``; an empty cell is one space (``| a | | c |``)."""
    return "|" + "|".join(f" {md_cell(c)} " if str(c) else " " for c in cells) + "|"


def csv_text(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """CSV (``\\n`` line ends, as Python's csv module quotes) of a header and rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    writer.writerows(list(r) for r in rows)
    return buf.getvalue()
