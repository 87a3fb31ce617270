"""Text tables that fit the terminal (pure: the CLI passes the width in).

Columns size to their content (a version such as ``~6.2-7.0.1`` is never cut); when the
table is wider than the terminal, the least useful columns go first, then the flexible
one (tag/labels) shrinks. Long text is cut in the middle, keeping more of the end: that is
where ids and release labels differ (``release:registry.fly.io/app:deployment-01H...``
would otherwise read the same for every release).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

ELLIPSIS = ".."
FLEX_NATURAL_MAX = 40
"""Without a width to fit, the flexible column still stops here (one wide label must not
push every row off a log viewer's screen)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    header: str
    right: bool = False
    flex: bool = False
    """Takes the room left once the table fits, down to ``min_width``."""
    drop: int = 0
    """Dropped when the table does not fit, highest first; 0: never dropped."""
    min_width: int = 4


def middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle (a quarter kept at the
    start, the rest at the end)."""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS) + 1:
        return text[-width:] if width > 0 else ""
    keep = width - len(ELLIPSIS)
    head = keep // 4
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head) :]


def fit(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None, indent: int = 2
) -> list[str]:
    """The header and the rows, laid out within ``width`` (None: content width). Cells
    must already be escaped (``text.safe``), so a cut never splits an escape."""
    natural = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    widths = [
        min(n, FLEX_NATURAL_MAX) if c.flex else n for c, n in zip(columns, natural, strict=True)
    ]
    shown = list(range(len(columns)))
    if width is not None:

        def total() -> int:
            return indent + sum(widths[i] for i in shown) + len(shown) - 1

        flex = [i for i in shown if columns[i].flex]
        for i in flex:  # at its minimum while deciding what else must go
            widths[i] = min(widths[i], columns[i].min_width)
        for i in sorted(shown, key=lambda i: -columns[i].drop):
            if total() <= width or columns[i].drop == 0:
                break
            shown.remove(i)
        for i in flex:  # then it takes whatever room is left, up to its content
            widths[i] = max(widths[i], min(natural[i], widths[i] + width - total()))
    pad = " " * indent

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i in shown:
            text = middle(cells[i], widths[i])
            parts.append(text.rjust(widths[i]) if columns[i].right else text.ljust(widths[i]))
        return (pad + " ".join(parts)).rstrip()

    return [line([c.header for c in columns]), *(line(r) for r in rows)]


def cut(text: str, width: int | None) -> str:
    """A free-text line (a Machine header, a note) cut in the middle to ``width``."""
    return text if width is None else middle(text, width)
