"""Receipts and invoices: vendor, date, 2-5 priced line items and a TOTAL equal to their sum."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .formats import QA
from .render import Box, Canvas

KIND = "receipt"
VENDORS = ("Green Leaf Cafe", "Blue Sky Market", "Sunny Bakery", "Corner Deli", "Fresh Mart",
           "City Books", "Pine Hardware", "Ocean Grill", "Golden Noodle", "Maple Pharmacy")
ITEMS = ("Coffee", "Tea", "Bagel", "Muffin", "Juice", "Salad", "Soup", "Cookie", "Water",
         "Sandwich", "Pasta", "Pizza")
TITLES = ("RECEIPT", "INVOICE")
# Easy tier keeps cents to a few values: fewer distinct strings for a tiny model to learn to read.
EASY_CENTS = (0, 25, 50, 75, 99)


@dataclass(frozen=True)
class LineItem:
    name: str
    cents: int


@dataclass(frozen=True)
class Receipt:
    title: str
    vendor: str
    date: str  # YYYY-MM-DD
    items: tuple[LineItem, ...]

    @property
    def total_cents(self) -> int:
        return sum(item.cents for item in self.items)


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def sample(rng: random.Random, tier: str) -> Receipt:
    n_items = rng.randint(2, 4) if tier == "easy" else rng.randint(3, 5)
    names = rng.sample(ITEMS, n_items)  # distinct, so "price of <item>" has one answer
    cents = [rng.randint(1, 19) * 100 + (rng.choice(EASY_CENTS) if tier == "easy" else rng.randint(0, 99))
             for _ in names]
    date = f"{rng.randint(2019, 2025):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return Receipt(rng.choice(TITLES), rng.choice(VENDORS), date,
                   tuple(LineItem(n, c) for n, c in zip(names, cents)))


def ask(receipt: Receipt, rng: random.Random) -> list[QA]:
    k = rng.randrange(len(receipt.items))
    item = receipt.items[k]
    total = money(receipt.total_cents)
    return [
        QA("total", "What is the total?", (total, "$" + total), box="total"),
        QA("vendor", "What is the vendor name?", (receipt.vendor,), box="vendor"),
        QA("date", "What is the date?", (receipt.date,), box="date"),
        QA("price", f"What is the price of {item.name}?", (money(item.cents), "$" + money(item.cents)),
           box=f"price{k}"),
    ]


def strings(receipt: Receipt) -> list[str]:
    lines = [receipt.vendor, receipt.title, "Date:", receipt.date, "TOTAL", money(receipt.total_cents)]
    return lines + [s for item in receipt.items for s in (item.name, money(item.cents))]


def render(receipt: Receipt, c: Canvas) -> dict[str, Box]:
    if c.style.tier == "easy":
        return _render_grid(receipt, c)
    margin = c.px(20) + c.ox
    left, right, centre = margin, c.width - c.px(20) + c.ox, c.width // 2 + c.ox
    boxes: dict[str, Box] = {}
    y = c.px(12) + c.oy

    vendor_font = c.fit_font([receipt.vendor], 26, right - left, bold=True)
    boxes["vendor"] = c.text(centre, y, receipt.vendor, vendor_font, "center")
    y += vendor_font.line_height + c.px(4)
    title_font = c.font(18)
    c.text(centre, y, receipt.title, title_font, "center")
    y += title_font.line_height + c.px(6)

    body = c.font(22)
    label = c.text(left, y, "Date:", body)
    boxes["date"] = c.text(label[2] + c.px(8), y, receipt.date, body)
    y += body.line_height + c.px(6)
    c.rule(y, left)
    y += c.px(10)

    for k, item in enumerate(receipt.items):
        c.text(left, y, item.name, body)
        boxes[f"price{k}"] = c.text(right, y, money(item.cents), body, "right")
        y += body.line_height + c.px(6)
    c.rule(y, left)
    y += c.px(10)

    total_font = c.font(24, bold=True)
    c.text(left, y, "TOTAL", total_font)
    boxes["total"] = c.text(right, y, money(receipt.total_cents), total_font, "right")
    return boxes


def _render_grid(receipt: Receipt, c: Canvas) -> dict[str, Box]:
    """Easy tier: fixed rows, values one character per grid cell (see Canvas.grid_text)."""
    cell, boxes = c.cell(), {}
    glyphs = c.font(22)
    vendor_font = c.fit_font([receipt.vendor], 24, c.width - 2 * c.px(8), bold=True)
    boxes["vendor"] = c.text(c.width // 2, (cell - vendor_font.line_height) // 2 + 2, receipt.vendor,
                             vendor_font, "center")
    c.text(c.width // 2, cell + c.px(4), receipt.title, c.font(16), "center")
    boxes["date"] = c.grid_text(1, 2, receipt.date, glyphs)
    c.rule(3 * cell + cell // 2, c.px(8))
    name_font = c.font(18)
    for k, item in enumerate(receipt.items):
        c.text(c.px(8), (4 + k) * cell + (cell - name_font.line_height) // 2 + 2, item.name, name_font)
        boxes[f"price{k}"] = c.grid_text(7, 4 + k, money(item.cents), glyphs)
    c.rule(8 * cell + cell // 2, c.px(8))
    total_font = c.font(20, bold=True)
    c.text(c.px(8), 9 * cell + (cell - total_font.line_height) // 2 + 2, "TOTAL", total_font)
    boxes["total"] = c.grid_text(7, 9, money(receipt.total_cents), glyphs)
    return boxes
