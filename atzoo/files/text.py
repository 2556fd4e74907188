"""Plain-text helpers shared by the figure writers of the engine (curves.png) and of the
reports (tradeoff.png, the loss panels); no plotting library is imported here."""

from __future__ import annotations

import textwrap


def fit_title(text: str, width_inches: float, fontsize: float = 10) -> str:
    """``text`` wrapped to a figure ``width_inches`` wide (a 10 pt character is ~0.085 in),
    so that a one-panel figure's heading is not cut at both sides."""
    chars = max(int(width_inches / (0.0085 * fontsize)), 20)
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())
