"""Bar charts: easy tier horizontal, on the token grid; hard tier vertical bars or lines read off gridlines.

Easy: one bar per second grid row, its label and its value printed one character per 28 px cell
(`Canvas.grid_text`, like the easy receipts and forms), the bar's length proportional to the value between
them. Hard: vertical bars or a line over gridlines, labels under the axis, no values printed.

Values are distinct multiples of 10 in 10..90, so "highest"/"lowest" have one answer and every value
lies on a gridline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .formats import QA
from .render import Box, Canvas

KIND = "chart"
LABELS = ("Apple", "Pear", "Plum", "Kiwi", "Lime", "Fig", "Peach", "Grape", "Mango", "Lemon")
TITLES = ("Fruit sales", "Sales by fruit", "Weekly orders", "Stock count")
AXIS_MAX = 100


@dataclass(frozen=True)
class Chart:
    style: str  # "hbar" (easy tier, on the token grid) | "bar" | "line"
    title: str
    labels: tuple[str, ...]
    values: tuple[int, ...]
    show_values: bool  # value printed by each bar/point; otherwise read it off the y axis

    @property
    def highest(self) -> int:
        return max(range(len(self.values)), key=self.values.__getitem__)

    @property
    def lowest(self) -> int:
        return min(range(len(self.values)), key=self.values.__getitem__)


def sample(rng: random.Random, tier: str) -> Chart:
    n = rng.randint(3, 5)
    labels = tuple(rng.sample(LABELS, n))
    values = tuple(10 * v for v in rng.sample(range(1, 10), n))
    if tier == "easy":
        return Chart("hbar", rng.choice(TITLES), labels, values, show_values=True)
    return Chart(rng.choice(("bar", "line")), rng.choice(TITLES), labels, values, show_values=False)


def ask(chart: Chart, rng: random.Random) -> list[QA]:
    k = rng.randrange(len(chart.labels))
    noun = "point" if chart.style == "line" else "bar"
    hi, lo = chart.highest, chart.lowest
    return [
        QA("highest", f"Which {noun} is the highest?", (chart.labels[hi],), box=f"label{hi}"),
        QA("lowest", f"Which {noun} is the lowest?", (chart.labels[lo],), box=f"label{lo}"),
        QA("value", f"What is the value of {chart.labels[k]}?", (str(chart.values[k]),),
           box=f"value{k}" if chart.show_values else None),
    ]


def strings(chart: Chart) -> list[str]:
    ticks = [] if chart.show_values else [str(v) for v in range(0, AXIS_MAX + 1, 20)]
    values = [str(v) for v in chart.values] if chart.show_values else []
    return [chart.title, *chart.labels, *values, *ticks]


def render(chart: Chart, c: Canvas) -> dict[str, Box]:
    if chart.style == "hbar":
        return _render_grid(chart, c)
    boxes: dict[str, Box] = {}
    margin = c.px(16)
    title_font = c.font(22, bold=True)
    c.text(c.width // 2 + c.ox, margin + c.oy, chart.title, title_font, "center")

    tick_font, value_font = c.font(14), c.font(18)
    axis_left = margin + c.ox + (0 if chart.show_values else tick_font.width("100") + c.px(6))
    axis_right = c.width - margin + c.ox
    slot = (axis_right - axis_left) / len(chart.labels)
    label_font = c.fit_font(list(chart.labels), 18, int(slot * 0.95))
    top = margin + c.oy + title_font.line_height + c.px(8) + value_font.line_height
    baseline = c.height - margin + c.oy - label_font.line_height - c.px(6)

    def y_of(value: float) -> int:
        return round(baseline - (baseline - top) * value / AXIS_MAX)

    if not chart.show_values:  # gridlines every 10, labelled every 20
        grid = tuple(min(255, v + 60) for v in c.style.ink)
        for v in range(10, AXIS_MAX + 1, 10):
            c.draw.line([(axis_left, y_of(v)), (axis_right, y_of(v))], fill=grid, width=1)
        for v in range(0, AXIS_MAX + 1, 20):
            c.text(axis_left - c.px(4), y_of(v) - tick_font.line_height // 2, str(v), tick_font, "right")

    points = []
    for k, (label, value) in enumerate(zip(chart.labels, chart.values)):
        centre = round(axis_left + slot * (k + 0.5))
        y = y_of(value)
        points.append((centre, y))
        if chart.style == "bar":
            half = round(slot * 0.3)
            c.draw.rectangle([centre - half, y, centre + half, baseline], fill=c.style.ink)
        if chart.show_values:
            boxes[f"value{k}"] = c.text(centre, y - value_font.line_height - c.px(2), str(value),
                                        value_font, "center")
        boxes[f"label{k}"] = c.text(centre, baseline + c.px(6), label, label_font, "center")
    if chart.style == "line":
        width, r = max(1, c.px(3)), max(2, c.px(5))
        c.draw.line(points, fill=c.style.ink, width=width)
        for x, y in points:
            c.draw.ellipse([x - r, y - r, x + r, y + r], fill=c.style.ink)

    c.draw.line([(axis_left, top - c.px(4)), (axis_left, baseline)], fill=c.style.ink, width=max(1, c.px(2)))
    c.draw.line([(axis_left, baseline), (axis_right, baseline)], fill=c.style.ink, width=max(1, c.px(2)))
    return boxes


LABEL_CELLS, BAR_CELLS = 5, 5  # grid columns 0-4: the label; 5-9: the bar; 10-11: the value


def _render_grid(chart: Chart, c: Canvas) -> dict[str, Box]:
    """Easy tier: the title on row 0, bar k on grid row 2 + 2k with its label and value in grid cells."""
    cell, boxes = c.cell(), {}
    glyphs = c.font(22)
    title_font = c.fit_font([chart.title], 22, c.width - 2 * c.px(8), bold=True)
    c.text(c.width // 2 + c.ox, (cell - title_font.line_height) // 2 + 2 + c.oy, chart.title, title_font, "center")
    axis = LABEL_CELLS * cell + c.ox + 1
    first, last = 2, 2 + 2 * (len(chart.labels) - 1)
    for k, (label, value) in enumerate(zip(chart.labels, chart.values)):
        row = 2 + 2 * k
        boxes[f"label{k}"] = c.grid_text(0, row, label, glyphs)
        y = row * cell + c.oy
        length = round((BAR_CELLS * cell - 2) * value / AXIS_MAX)
        c.draw.rectangle([axis + 1, y + cell // 4, axis + length, y + cell - cell // 4 - 1], fill=c.style.ink)
        boxes[f"value{k}"] = c.grid_text(LABEL_CELLS + BAR_CELLS, row, str(value), glyphs)
    c.draw.line([(axis, first * cell + c.oy - c.px(4)), (axis, (last + 1) * cell + c.oy + c.px(4))],
                fill=c.style.ink, width=max(1, c.px(2)))
    return boxes
