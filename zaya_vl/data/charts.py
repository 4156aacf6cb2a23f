"""Bar charts (easy: value printed on each bar) and, in the hard tier, line charts read off gridlines.

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
    style: str  # "bar" | "line"
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
        return Chart("bar", rng.choice(TITLES), labels, values, show_values=True)
    return Chart(rng.choice(("bar", "line")), rng.choice(TITLES), labels, values, show_values=False)


def ask(chart: Chart, rng: random.Random) -> list[QA]:
    k = rng.randrange(len(chart.labels))
    noun = "bar" if chart.style == "bar" else "point"
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
