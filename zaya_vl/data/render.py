"""Fonts, page styles and drawing helpers shared by every synthetic document kind.

Text uses only the font embedded in Pillow itself (`ImageFont.load_default(size=...)`, Aileron
Regular, Pillow >= 10.1 with FreeType, which every PyPI wheel has), so the output does not depend on
which system fonts a machine has. "Bold" is the same face drawn with a 1 px stroke. Without FreeType
Pillow only has an 11 px bitmap font; we then draw with it and upscale by an integer factor, which is
uglier but still deterministic and roughly the requested size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features

# Layouts are designed on a 336 px square (12 x 12 merged 28 px patches of a Qwen2.5-VL tower) and
# scaled by min(width, height) / 336 for other sizes.
BASE_SIZE = 336
FONT_NAME = "Pillow built-in (Aileron Regular)"
_BITMAP_FONT_HEIGHT = 11

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 of the ink, in image pixels
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Style:
    """How a page looks, independent of what it says. Easy: black on white, full size, no noise."""

    tier: str
    font_scale: float
    ink: RGB
    paper: RGB
    jitter: tuple[int, int]  # whole-layout offset in pixels at BASE_SIZE
    blur: float  # Gaussian blur radius in pixels, like a soft scan
    speckle: float  # fraction of pixels replaced by random grey dots; sparse so PNGs stay small
    noise_seed: int


def sample_style(rng: random.Random, tier: str) -> Style:
    if tier == "easy":
        return Style("easy", 1.0, (0, 0, 0), (255, 255, 255), (0, 0), 0.0, 0.0, 0)
    if tier == "hard":
        grey, paper = rng.randint(30, 90), rng.randint(215, 245)
        return Style(
            tier="hard",
            font_scale=rng.choice((0.7, 0.75, 0.8)),
            ink=(grey, grey, grey),
            paper=(paper, paper, paper - rng.randint(0, 20)),
            jitter=(rng.randint(-8, 8), rng.randint(-8, 8)),
            blur=rng.choice((0.0, 0.5, 0.8)),
            speckle=rng.choice((0.005, 0.01, 0.02)),
            noise_seed=rng.getrandbits(32),
        )
    raise ValueError(f"unknown tier {tier!r}; expected 'easy' or 'hard'")


class Font:
    """One face at one pixel size; measures and draws identically with or without FreeType."""

    def __init__(self, size: int, bold: bool = False, freetype: bool | None = None):
        self.size, self.bold = size, bold
        self.freetype = features.check("freetype2") if freetype is None else freetype
        if self.freetype:
            self._font = ImageFont.load_default(size=size)
            self._scale = 1
        else:
            self._font = ImageFont.load_default_imagefont()
            self._scale = max(1, round(size / _BITMAP_FONT_HEIGHT))
        self._stroke = 1 if (bold and self.freetype) else 0
        self._extra = 1 if (bold and not self.freetype) else 0  # faux bold: second pass 1 px right

    def bbox(self, text: str) -> Box:
        """Ink box of `text` drawn with its top-left at (0, 0)."""
        if self.freetype:
            return self._font.getbbox(text, anchor="lt", stroke_width=self._stroke)
        x0, y0, x1, y1 = self._font.getbbox(text)
        s = self._scale
        return (x0 * s, y0 * s, (x1 + self._extra) * s, y1 * s)

    def width(self, text: str) -> int:
        x0, _, x1, _ = self.bbox(text)
        return x1 - x0

    @property
    def line_height(self) -> int:
        # Same for every string so rows align whatever they contain.
        return self.bbox("Ag")[3] + max(1, self.size // 8)

    def draw(self, image: Image.Image, xy: tuple[int, int], text: str, fill: RGB) -> Box:
        x, y = xy
        if self.freetype:
            ImageDraw.Draw(image).text(
                (x, y), text, fill=fill, font=self._font, anchor="lt",
                stroke_width=self._stroke, stroke_fill=fill,
            )
        else:
            x0, y0, x1, y1 = self._font.getbbox(text)
            mask = Image.new("L", (x1 + self._extra, y1), 0)
            for dx in range(self._extra + 1):
                ImageDraw.Draw(mask).text((dx, 0), text, fill=255, font=self._font)
            mask = mask.resize((mask.width * self._scale, mask.height * self._scale), Image.NEAREST)
            image.paste(Image.new("RGB", mask.size, fill), (x, y), mask)
        bx0, by0, bx1, by1 = self.bbox(text)
        return (x + bx0, y + by0, x + bx1, y + by1)

    def draw_in_cell(self, image: Image.Image, xy: tuple[int, int], size: int, glyph: str, fill: RGB) -> None:
        """Draw one glyph centred in the `size` px square at `xy`, every glyph on the baseline of "0"."""
        x, y = xy
        _, top, _, bottom = self.bbox("0")
        if self.freetype:
            ImageDraw.Draw(image).text((x + size // 2, y + (size + bottom - top) // 2), glyph, fill=fill,
                                       font=self._font, anchor="ms", stroke_width=self._stroke, stroke_fill=fill)
        else:
            bx0, _, bx1, _ = self.bbox(glyph)
            self.draw(image, (x + (size - (bx1 - bx0)) // 2 - bx0, y + (size - (bottom - top)) // 2 - top), glyph, fill)


@lru_cache(maxsize=256)
def get_font(size: int, bold: bool = False) -> Font:
    return Font(size, bold)


class Canvas:
    """A page being drawn: converts BASE_SIZE layout units to pixels and applies the style."""

    def __init__(self, size: tuple[int, int], style: Style):
        self.width, self.height = size
        self.style = style
        self.unit = min(size) / BASE_SIZE
        self.image = Image.new("RGB", size, style.paper)
        self.draw = ImageDraw.Draw(self.image)
        self.ox, self.oy = self.px(style.jitter[0]), self.px(style.jitter[1])
        self.cells: dict[tuple[int, int], str] = {}  # (col, row) -> the glyph grid_text drew in that cell

    def px(self, base: float) -> int:
        return round(base * self.unit)

    def font(self, base_size: float, bold: bool = False) -> Font:
        return get_font(max(8, round(base_size * self.unit * self.style.font_scale)), bold)

    def fit_font(self, texts: list[str], base_size: float, max_width: int, bold: bool = False) -> Font:
        """Largest font no bigger than `base_size` in which every text fits in `max_width` pixels."""
        font = self.font(base_size, bold)
        while font.size > 8 and max(font.width(t) for t in texts) > max_width:
            font = get_font(font.size - 1, bold)
        return font

    def text(self, x: int, y: int, text: str, font: Font, align: str = "left", fill: RGB | None = None) -> Box:
        """Draw at pixel (x, y): x is the left edge, centre or right edge depending on `align`."""
        w = font.width(text)
        left = {"left": x, "center": x - w // 2, "right": x - w}[align]
        return font.draw(self.image, (left, y), text, fill or self.style.ink)

    # Easy-tier pages print values one character per cell of a GRID_CELL grid: the cell is one merged
    # 28 px token of a Qwen2.5-VL tower at BASE_SIZE, so each token sees exactly one whole glyph and
    # reading a value is a per-token lookup.
    GRID_CELL = 28

    def cell(self) -> int:
        # Rounded down so that BASE_SIZE / GRID_CELL = 12 cells always fit across the page.
        return max(1, int(self.GRID_CELL * self.unit))

    def grid_text(self, col: int, row: int, text: str, font: Font) -> Box:
        """Draw `text` one character per grid cell from cell (col, row), each glyph centred in its cell."""
        size = self.cell()
        x0, y0 = col * size + self.ox, row * size + self.oy
        for k, ch in enumerate(text):
            if ch != " ":
                font.draw_in_cell(self.image, (x0 + k * size, y0), size, ch, self.style.ink)
                self.cells[(col + k, row)] = ch
        return (x0, y0, x0 + len(text) * size, y0 + size)

    def cell_rows(self) -> list[str] | None:
        """What grid_text drew, as one string per grid row over the whole page (a space: no glyph recorded),
        or None when nothing was drawn on the grid, the layout is shifted off it (jitter) or a cell is not one
        28 px merged token (pages of another size than BASE_SIZE). These are the per-token reading targets of
        the trainer's cell loss (`cells` of a chat row's image part)."""
        size = self.cell()
        if not self.cells or self.ox or self.oy or size != self.GRID_CELL:
            return None
        grid = [[" "] * (self.width // size) for _ in range(self.height // size)]
        for (col, row), ch in self.cells.items():
            if row < len(grid) and col < len(grid[row]):
                grid[row][col] = ch
        return ["".join(row) for row in grid]

    def rule(self, y: int, margin: int, width: int = 2) -> None:
        self.draw.line([(margin, y), (self.width - margin, y)], fill=self.style.ink, width=width)

    def finish(self) -> Image.Image:
        image = self.image
        if self.style.blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(self.style.blur))
        if self.style.speckle > 0:
            rng = np.random.default_rng(self.style.noise_seed)
            pixels = np.array(image)
            dots = rng.random(pixels.shape[:2]) < self.style.speckle
            pixels[dots] = rng.integers(0, 256, size=(int(dots.sum()), 1), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGB")
        return image
