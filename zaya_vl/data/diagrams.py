"""Diagrams of coloured shapes joined by lines, asked as 4-option multiple choice (AI2D style).

Each shape type and each colour appears at most once per diagram, and every line joins a pair of
shapes that touch no other line, so "the circle", "the red shape" and "connected to" are unambiguous.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .formats import QA
from .render import Box, Canvas

KIND = "diagram"
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon")
COLORS = {"red": (220, 30, 30), "green": (20, 150, 60), "blue": (30, 80, 220),
          "yellow": (240, 200, 20), "purple": (140, 50, 170), "orange": (245, 130, 20)}
GRID = 3  # shapes sit in cells of a GRID x GRID layout


@dataclass(frozen=True)
class Node:
    shape: str
    color: str
    cell: tuple[int, int]  # (row, column)


@dataclass(frozen=True)
class Diagram:
    nodes: tuple[Node, ...]
    edges: tuple[tuple[int, int], ...]  # node indices; a matching, so each node has <= 1 neighbour
    labelled: bool  # shape names printed under the shapes (easy tier)

    def neighbour(self, k: int) -> int | None:
        for a, b in self.edges:
            if k in (a, b):
                return b if a == k else a
        return None


def _segment_clears(p, q, others, clearance: float) -> bool:
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    for ox, oy in others:
        t = max(0.0, min(1.0, ((ox - px) * dx + (oy - py) * dy) / (dx * dx + dy * dy)))
        if math.hypot(px + t * dx - ox, py + t * dy - oy) < clearance:
            return False
    return True


def sample(rng: random.Random, tier: str) -> Diagram:
    n = 3 if tier == "easy" else 4
    shapes, colors = rng.sample(SHAPES, n), rng.sample(list(COLORS), n)
    all_cells = [(r, col) for r in range(GRID) for col in range(GRID)]
    while True:  # resample until no line passes through a third shape
        cells = rng.sample(all_cells, n)
        edges = ((0, 1),) if n == 3 else ((0, 1), (2, 3))
        if all(_segment_clears(cells[a], cells[b], [cells[k] for k in range(n) if k not in (a, b)], 0.6)
               for a, b in edges):
            break
    nodes = tuple(Node(s, col, cell) for s, col, cell in zip(shapes, colors, cells))
    return Diagram(nodes, edges, labelled=(tier == "easy"))


def _multiple_choice(rng: random.Random, qtype: str, question: str, correct: str,
                     distractors: list[str], box: str) -> QA:
    options = [correct, *rng.sample(distractors, 3)]
    rng.shuffle(options)
    return QA(qtype, question, (correct,), tuple(options), options.index(correct), box)


def ask(diagram: Diagram, rng: random.Random) -> list[QA]:
    nodes = diagram.nodes
    k = rng.randrange(len(nodes))
    m = rng.randrange(len(nodes))
    a = rng.choice([a for a, _ in diagram.edges] + [b for _, b in diagram.edges])
    b = diagram.neighbour(a)
    return [
        _multiple_choice(rng, "color", f"What color is the {nodes[k].shape}?", nodes[k].color,
                         [c for c in COLORS if c != nodes[k].color], f"node{k}"),
        _multiple_choice(rng, "shape", f"Which shape is {nodes[m].color}?", nodes[m].shape,
                         [s for s in SHAPES if s != nodes[m].shape], f"node{m}"),
        _multiple_choice(rng, "connected", f"Which shape is connected to the {nodes[a].shape}?",
                         nodes[b].shape, [s for s in SHAPES if s not in (nodes[a].shape, nodes[b].shape)],
                         f"node{b}"),
    ]


def strings(diagram: Diagram) -> list[str]:
    return [node.shape for node in diagram.nodes] if diagram.labelled else []


def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    corners = {"square": (4, 45), "triangle": (3, -90), "diamond": (4, 0), "hexagon": (6, 0)}[shape]
    sides, start = corners
    radius = r * (1.35 if shape == "square" else 1.15 if shape == "triangle" else 1.0)
    return [(x + radius * math.cos(math.radians(start + 360 * i / sides)),
             y + radius * math.sin(math.radians(start + 360 * i / sides))) for i in range(sides)]


def render(diagram: Diagram, c: Canvas) -> dict[str, Box]:
    cell = min(c.width, c.height) / GRID
    r = cell * 0.26
    label_font = c.font(16)

    def centre(node: Node) -> tuple[int, int]:
        row, col = node.cell
        return round((col + 0.5) * cell) + c.ox, round((row + 0.45) * cell) + c.oy

    for a, b in diagram.edges:
        c.draw.line([centre(diagram.nodes[a]), centre(diagram.nodes[b])], fill=c.style.ink,
                    width=max(2, c.px(4)))
    boxes: dict[str, Box] = {}
    outline_width = max(1, c.px(2))
    for k, node in enumerate(diagram.nodes):
        x, y = centre(node)
        fill = COLORS[node.color]
        if node.shape == "circle":
            c.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=c.style.ink, width=outline_width)
        else:
            c.draw.polygon(_outline(node.shape, x, y, r), fill=fill, outline=c.style.ink, width=outline_width)
        boxes[f"node{k}"] = (round(x - r), round(y - r), round(x + r), round(y + r))
        if diagram.labelled:
            w, top = label_font.width(node.shape), round(y + r + c.px(6))
            # A paper-coloured plate keeps the name readable where a line passes under it.
            c.draw.rectangle([x - w // 2 - 2, top - 2, x + w // 2 + 2, top + label_font.line_height],
                             fill=c.style.paper)
            c.text(x, top, node.shape, label_font, "center")
    return boxes
