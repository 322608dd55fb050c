"""Local image renderer: cartoon animal portraits drawn with Pillow primitives.

``render_png`` is a pure function of its arguments. Every random choice comes
from generators seeded with SHA-256 digests of (seed, animal[, index]), and the
PNG carries no metadata, so equal inputs always give byte-identical files.

Each image shows a background (gradient plus a pattern of shapes), the
animal's head (or whole body, for the penguin) with a little jitter in
position, tilt and scale, a name label and an ``#n`` caption (n is the image's
index, numbered from 0 as in its URL ``/images/{jobId}/{n}.png``). The background
hue steps by the golden ratio with the index, so the images of one job are
visibly distinct from each other.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
Point = tuple[float, float]

INK: Color = (45, 35, 40)
BLACK: Color = (35, 33, 40)
WHITE: Color = (252, 250, 246)
PINK: Color = (244, 160, 172)
BLUSH: Color = (246, 150, 160)
ORANGE: Color = (250, 150, 40)
SIDES = (-1, 1)

_MIN_SIZE = 16
_STROKE = 0.045  # outline width, in head units
_GOLDEN = 0.618033988749895


@dataclass
class Pen:
    """Draws in head units: the face is about the unit circle around (0, 0), y points down.

    The whole figure is turned clockwise by ``angle`` degrees about (0, 0), then
    scaled by ``scale`` pixels per unit and moved to ``origin``. With ``draw``
    set to None the pen only measures: ``bounds`` collects the pixel extent of
    everything drawn. With ``tint`` set it paints only the silhouette, in that
    colour: shapes without an outline lie inside others and are skipped.
    """

    draw: ImageDraw.ImageDraw | None
    scale: float
    origin: Point = (0.0, 0.0)
    angle: float = 0.0
    tint: Color | None = None
    bounds: list[float] = field(default_factory=lambda: [math.inf, math.inf, -math.inf, -math.inf])
    _cos: float = field(init=False, repr=False)
    _sin: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        a = math.radians(self.angle)
        self._cos, self._sin = math.cos(a), math.sin(a)

    def map(self, points: Sequence[Point]) -> list[Point]:
        """Head units to pixels."""
        c, s = self._cos * self.scale, self._sin * self.scale
        ox, oy = self.origin
        return [(ox + x * c - y * s, oy + x * s + y * c) for x, y in points]

    def oval(
        self,
        x: float,
        y: float,
        rx: float,
        ry: float,
        fill: Color,
        *,
        angle: float = 0.0,
        outline: bool = True,
    ) -> None:
        """Ellipse centred at (x, y); ``angle`` turns it clockwise, in degrees."""
        if self.tint and not outline:
            return
        n = max(16, min(96, round(2 * math.pi * max(rx, ry) * self.scale / 6)))
        if outline:
            half = _STROKE / 2
            self._fill(_oval_points(x, y, rx + half, ry + half, angle, n), INK)
            if self.tint:
                return
            rx, ry = rx - half, ry - half
        self._fill(_oval_points(x, y, rx, ry, angle, n), fill)

    def circle(self, x: float, y: float, r: float, fill: Color, *, outline: bool = True) -> None:
        self.oval(x, y, r, r, fill, outline=outline)

    def poly(self, points: Sequence[Point], fill: Color, *, outline: bool = True) -> None:
        if self.tint and not outline:
            return
        self._fill(points, fill)
        if outline:
            self.line([*points, points[0], points[1]])

    def line(self, points: Sequence[Point], *, weight: float = 1.0, fill: Color = INK) -> None:
        width = _STROKE * weight * self.scale
        xy = self.map(points)
        if self.draw is None:
            self._track(xy, width / 2)
        else:
            self.draw.line(xy, fill=self.tint or fill, width=max(1, round(width)), joint="curve")

    def arc(
        self,
        x: float,
        y: float,
        rx: float,
        ry: float,
        start: float,
        end: float,
        *,
        weight: float = 1.0,
    ) -> None:
        """Arc of the ellipse at (x, y); angles in degrees, clockwise from 3 o'clock."""
        self.line(_arc_points(x, y, rx, ry, start, end), weight=weight)

    def _fill(self, points: Sequence[Point], color: Color) -> None:
        xy = self.map(points)
        if self.draw is None:
            self._track(xy, 0.0)
        else:
            self.draw.polygon(xy, fill=self.tint or color)

    def _track(self, xy: Sequence[Point], pad: float) -> None:
        xs, ys = [x for x, _ in xy], [y for _, y in xy]
        x0, y0, x1, y1 = self.bounds
        self.bounds = [
            min(x0, min(xs) - pad),
            min(y0, min(ys) - pad),
            max(x1, max(xs) + pad),
            max(y1, max(ys) + pad),
        ]


# Geometry helpers ----------------------------------------------------------


def _oval_points(x: float, y: float, rx: float, ry: float, angle: float, n: int) -> list[Point]:
    a = math.radians(angle)
    cos_a, sin_a = math.cos(a), math.sin(a)
    points = []
    for i in range(n):
        t = 2 * math.pi * i / n
        dx, dy = rx * math.cos(t), ry * math.sin(t)
        points.append((x + dx * cos_a - dy * sin_a, y + dx * sin_a + dy * cos_a))
    return points


def _arc_points(
    x: float, y: float, rx: float, ry: float, start: float, end: float, n: int = 24
) -> list[Point]:
    angles = (math.radians(start + (end - start) * i / (n - 1)) for i in range(n))
    return [(x + rx * math.cos(t), y + ry * math.sin(t)) for t in angles]


def _mirror(points: Sequence[Point]) -> list[Point]:
    return [(-x, y) for x, y in points]


def _shrink(points: Sequence[Point], k: float) -> list[Point]:
    """Scale a polygon about its centroid, e.g. for the inner part of an ear."""
    cx = sum(x for x, _ in points) / len(points)
    cy = sum(y for _, y in points) / len(points)
    return [(cx + (x - cx) * k, cy + (y - cy) * k) for x, y in points]


def _lerp(p: Point, q: Point, t: float) -> Point:
    return (p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t)


def _shade(color: Color, k: float) -> Color:
    """Darken (k < 1) or lighten towards white (k > 1)."""
    if k <= 1:
        return tuple(round(c * k) for c in color)  # type: ignore[return-value]
    return tuple(round(c + (255 - c) * (k - 1)) for c in color)  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


# Shared face parts ---------------------------------------------------------


def _eyes(
    pen: Pen,
    dx: float,
    y: float,
    r: float,
    *,
    sclera: float = 0.0,
    iris: Color | None = None,
    iris_r: float = 0.0,
    slit: bool = False,
) -> None:
    """A pair of cartoon eyes: optional white and coloured iris, dark pupil, highlight."""
    for side in SIDES:
        x = side * dx
        if sclera:
            pen.circle(x, y, sclera, WHITE)
        if iris is not None:
            pen.circle(x, y, iris_r, iris)
        if slit:
            pen.oval(x, y, r * 0.35, r, BLACK, outline=False)
        else:
            pen.circle(x, y, r, BLACK, outline=False)
        pen.circle(x - r * 0.3, y - r * 0.35, r * 0.38, WHITE, outline=False)


def _round_ears(pen: Pen, dx: float, y: float, r: float, fur: Color, inner: Color | None) -> None:
    for side in SIDES:
        pen.circle(side * dx, y, r, fur)
        if inner is not None:
            pen.circle(side * dx * 0.97, y + r * 0.1, r * 0.58, inner, outline=False)


def _pointed_ears(pen: Pen, right_ear: Sequence[Point], fur: Color, inner: Color | None) -> None:
    """Two triangular ears; ``right_ear`` is (inner base, outer base, tip) of the right one."""
    for ear in (list(right_ear), _mirror(right_ear)):
        pen.poly(ear, fur)
        if inner is not None:
            pen.poly(_shrink(ear, 0.55), inner, outline=False)


def _nose(pen: Pen, y: float, w: float, fill: Color) -> None:
    """A rounded, downward-pointing nose whose top edge is at ``y``."""
    h = w * 0.75
    pen.poly([(-w, y), (w, y), (w * 0.25, y + h), (-w * 0.25, y + h)], fill)


def _smile(pen: Pen, y: float, w: float) -> None:
    """The cartoon 'w' mouth: a short philtrum line and two arcs meeting under it."""
    pen.line([(0, y - w * 0.9), (0, y)])
    for side in SIDES:
        pen.arc(side * w, y - w * 0.1, w, w * 0.8, 10, 170)


def _whiskers(pen: Pen, y: float, x0: float, length: float) -> None:
    for side in SIDES:
        for dy in (-0.09, 0.0, 0.09):
            pen.line([(side * x0, y + dy * 0.6), (side * (x0 + length), y + dy * 2.2)], weight=0.6)


def _cheeks(pen: Pen, dx: float, y: float, r: float) -> None:
    for side in SIDES:
        pen.oval(side * dx, y, r, r * 0.65, BLUSH, outline=False)


def _ellipse_reach(a: float, b: float, t: float) -> float:
    """Distance from an ellipse's centre to its edge along the axis of semi-axis ``a``,
    at offset ``t`` along the axis of semi-axis ``b``."""
    return a * math.sqrt(max(0.0, 1 - (t / b) ** 2))


# Animals --------------------------------------------------------------------


def _bear(pen: Pen, rng: random.Random) -> None:
    fur = rng.choice([(150, 98, 56), (120, 80, 50), (170, 115, 70)])
    light = (224, 188, 140)
    _round_ears(pen, 0.72, -0.72, 0.34, fur, light)
    pen.circle(0, 0, 1.0, fur)
    pen.oval(0, 0.4, 0.48, 0.36, light)
    _eyes(pen, 0.38, -0.15, 0.11)
    _nose(pen, 0.18, 0.16, BLACK)
    _smile(pen, 0.52, 0.13)


def _cat(pen: Pen, rng: random.Random) -> None:
    fur = rng.choice([(240, 150, 60), (160, 160, 172), (236, 226, 210)])
    _pointed_ears(pen, [(0.22, -0.8), (0.95, -0.38), (0.85, -1.38)], fur, PINK)
    pen.oval(0, 0, 1.05, 0.92, fur)
    for x in (-0.18, 0.0, 0.18):
        pen.poly([(x - 0.06, -0.9), (x + 0.06, -0.9), (x, -0.62)], _shade(fur, 0.72), outline=False)
    _eyes(pen, 0.4, -0.12, 0.14, iris=(120, 200, 90), iris_r=0.17, slit=True)
    _nose(pen, 0.18, 0.1, PINK)
    _smile(pen, 0.42, 0.12)
    _whiskers(pen, 0.3, 0.32, 0.8)


def _dog(pen: Pen, rng: random.Random) -> None:
    fur = rng.choice([(200, 145, 90), (228, 205, 165), (160, 112, 75)])
    ear = _shade(fur, 0.6)
    light = _shade(fur, 1.55)
    pen.oval(0, 0, 0.95, 1.0, fur)
    if rng.random() < 0.5:
        pen.oval(rng.choice(SIDES) * 0.36, -0.15, 0.24, 0.22, ear, outline=False)
    for side in SIDES:
        pen.oval(side * 0.9, 0.12, 0.28, 0.62, ear, angle=-side * 18)
    pen.oval(0, 0.45, 0.5, 0.36, light)
    pen.oval(0, 0.88, 0.13, 0.17, (235, 90, 110))
    _eyes(pen, 0.36, -0.15, 0.11)
    pen.oval(0, 0.28, 0.19, 0.13, BLACK)
    _smile(pen, 0.62, 0.14)


def _fox(pen: Pen, rng: random.Random) -> None:
    orange = rng.choice([(236, 118, 38), (222, 100, 30), (240, 135, 55)])
    cream = (252, 246, 236)
    right_ear = [(0.18, -0.7), (0.85, -0.35), (0.78, -1.45)]
    _pointed_ears(pen, right_ear, orange, cream)
    for ear in (right_ear, _mirror(right_ear)):
        tip = ear[2]
        pen.poly([tip, _lerp(tip, ear[0], 0.3), _lerp(tip, ear[1], 0.3)], BLACK)
    right = [*_arc_points(0, -0.1, 0.95, 0.8, 270, 360, 12), (1.2, 0.22), (0.45, 0.62), (0, 0.95)]
    head = right + _mirror(right[::-1])
    pen.poly(head, orange)
    right_cheek = [(1.2, 0.22), (0.55, 0.12), (0.14, 0.4), (0, 0.95), (0.45, 0.62)]
    for cheek in (right_cheek, _mirror(right_cheek)):
        pen.poly(cheek, cream)
    _eyes(pen, 0.38, -0.12, 0.1)
    pen.oval(0, 0.86, 0.14, 0.1, BLACK)


def _frog(pen: Pen, rng: random.Random) -> None:
    green = rng.choice([(110, 190, 80), (90, 175, 95), (140, 200, 70)])
    pen.oval(0, 0.15, 1.15, 0.78, green)
    for side in SIDES:
        pen.circle(side * 0.52, -0.55, 0.36, green)
    _eyes(pen, 0.52, -0.55, 0.13, sclera=0.26)
    for side in SIDES:
        pen.circle(side * 0.12, 0.02, 0.035, INK, outline=False)
    _cheeks(pen, 0.75, 0.3, 0.14)
    pen.arc(0, 0.15, 0.7, 0.42, 20, 160, weight=1.3)


def _lion(pen: Pen, rng: random.Random) -> None:
    mane = rng.choice([((190, 100, 40), (215, 130, 50)), ((160, 80, 40), (195, 110, 50))])
    face = (245, 202, 115)
    for i in range(16):
        t = 2 * math.pi * i / 16
        pen.circle(1.05 * math.cos(t), 0.05 + 1.05 * math.sin(t), 0.38, mane[i % 2])
    pen.circle(0, 0.05, 1.05, mane[0], outline=False)
    _round_ears(pen, 0.6, -0.62, 0.22, face, _shade(face, 0.8))
    pen.circle(0, 0.05, 0.82, face)
    for side in SIDES:
        pen.circle(side * 0.17, 0.4, 0.2, (255, 240, 215))
    _eyes(pen, 0.33, -0.12, 0.1)
    _nose(pen, 0.2, 0.13, (150, 80, 60))
    pen.line([(0, 0.3), (0, 0.45)])


def _owl(pen: Pen, rng: random.Random) -> None:
    brown = rng.choice([(140, 95, 60), (120, 100, 85), (165, 115, 70)])
    light = (226, 196, 150)
    for side in SIDES:
        pen.oval(side * 0.3, 1.18, 0.17, 0.08, ORANGE)
        pen.oval(side * 0.92, 0.4, 0.26, 0.62, _shade(brown, 0.75), angle=side * 14)
    _pointed_ears(pen, [(0.3, -0.85), (0.7, -0.72), (0.88, -1.32)], brown, None)
    pen.oval(0, 0.1, 0.98, 1.12, brown)
    pen.oval(0, 0.68, 0.58, 0.42, light, outline=False)
    for row, y in enumerate((0.6, 0.78, 0.96)):
        for i in range(3 - row % 2):
            x = (i - (2 - row % 2) / 2) * 0.26
            pen.arc(x, y, 0.09, 0.07, 10, 170)
    for side in SIDES:
        pen.circle(side * 0.42, -0.12, 0.42, light)
    _eyes(pen, 0.42, -0.12, 0.15, iris=(250, 200, 40), iris_r=0.28)
    pen.poly([(-0.12, 0.16), (0.12, 0.16), (0, 0.46)], ORANGE)


def _panda(pen: Pen, rng: random.Random) -> None:
    _round_ears(pen, 0.72, -0.72, 0.32, BLACK, None)
    pen.circle(0, 0, 1.0, WHITE)
    for side in SIDES:
        pen.oval(side * 0.4, -0.05, 0.22, 0.32, BLACK, angle=-side * 35, outline=False)
    _eyes(pen, 0.4, -0.1, 0.07, sclera=0.11)
    pen.oval(0, 0.3, 0.14, 0.09, BLACK)
    _smile(pen, 0.52, 0.12)
    _cheeks(pen, 0.62, 0.35, 0.12)


def _penguin(pen: Pen, rng: random.Random) -> None:
    body = rng.choice([(40, 42, 55), (30, 45, 70)])
    for side in SIDES:
        pen.oval(side * 0.33, 1.3, 0.26, 0.12, ORANGE)
        pen.oval(side * 0.86, 0.45, 0.18, 0.52, body, angle=-side * 22)
    pen.oval(0, 0.2, 0.9, 1.2, body)
    pen.oval(0, 0.48, 0.62, 0.82, WHITE, outline=False)
    for side in SIDES:
        pen.circle(side * 0.22, -0.45, 0.3, WHITE, outline=False)
    _eyes(pen, 0.22, -0.5, 0.09)
    _cheeks(pen, 0.38, -0.28, 0.09)
    pen.poly([(-0.15, -0.32), (0.15, -0.32), (0, -0.1)], ORANGE)


def _pig(pen: Pen, rng: random.Random) -> None:
    pink = rng.choice([(250, 182, 192), (246, 170, 180)])
    dark = (235, 125, 148)
    _pointed_ears(pen, [(0.3, -0.8), (0.95, -0.45), (0.95, -1.18)], pink, dark)
    pen.oval(0, 0, 1.05, 0.95, pink)
    pen.oval(0, 0.3, 0.4, 0.28, (245, 148, 168))
    for side in SIDES:
        pen.oval(side * 0.14, 0.3, 0.06, 0.11, (150, 60, 80), outline=False)
    _eyes(pen, 0.4, -0.22, 0.1)
    _cheeks(pen, 0.7, 0.25, 0.13)
    pen.arc(0, 0.55, 0.2, 0.14, 20, 160)


def _rabbit(pen: Pen, rng: random.Random) -> None:
    fur = rng.choice([(242, 240, 236), (205, 195, 185), (190, 150, 112)])
    for side in SIDES:
        pen.oval(side * 0.36, -1.3, 0.22, 0.72, fur, angle=side * 10)
        pen.oval(side * 0.36, -1.25, 0.11, 0.55, PINK, angle=side * 10, outline=False)
    pen.oval(0, 0, 0.95, 0.9, fur)
    for side in SIDES:
        pen.poly([(0, 0.42), (side * 0.11, 0.42), (side * 0.11, 0.62), (0, 0.62)], WHITE)
    _eyes(pen, 0.36, -0.12, 0.11)
    _nose(pen, 0.18, 0.09, PINK)
    _smile(pen, 0.42, 0.12)
    _whiskers(pen, 0.3, 0.3, 0.75)


def _tiger(pen: Pen, rng: random.Random) -> None:
    orange = rng.choice([(245, 140, 40), (235, 125, 35)])
    rx, ry = 1.05, 0.95
    _round_ears(pen, 0.72, -0.7, 0.28, orange, WHITE)
    pen.oval(0, 0, rx, ry, orange)
    for y in (-0.2, 0.05, 0.3):
        edge = _ellipse_reach(rx, ry, y) - 0.02
        for side in SIDES:
            stripe = [(side * edge, y - 0.08), (side * (edge - 0.35), y + 0.02), (side * edge, y + 0.06)]
            pen.poly(stripe, BLACK, outline=False)
    for x, depth in ((-0.22, 0.22), (0.0, 0.32), (0.22, 0.22)):
        top = -_ellipse_reach(ry, rx, x) + 0.02
        pen.poly([(x - 0.07, top), (x + 0.07, top), (x, top + depth)], BLACK, outline=False)
    for side in SIDES:
        pen.oval(side * 0.38, -0.36, 0.14, 0.06, WHITE, outline=False)
        pen.circle(side * 0.19, 0.42, 0.24, WHITE)
    _eyes(pen, 0.38, -0.15, 0.09, iris=(250, 200, 60), iris_r=0.13)
    _nose(pen, 0.1, 0.15, (225, 105, 110))


DRAWERS: dict[str, Callable[[Pen, random.Random], None]] = {
    "bear": _bear,
    "cat": _cat,
    "dog": _dog,
    "fox": _fox,
    "frog": _frog,
    "lion": _lion,
    "owl": _owl,
    "panda": _panda,
    "penguin": _penguin,
    "pig": _pig,
    "rabbit": _rabbit,
    "tiger": _tiger,
}
"""Drawing function per supported animal; ``app.images.animals.ANIMALS`` lists the same names."""


# Background -----------------------------------------------------------------


def _dots(draw: ImageDraw.ImageDraw, size: int, rng: random.Random, color: Color) -> None:
    for _ in range(26):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.01, 0.04) * size
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _rings(draw: ImageDraw.ImageDraw, size: int, rng: random.Random, color: Color) -> None:
    width = max(1, size // 100)
    for _ in range(16):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.02, 0.07) * size
        draw.ellipse((x - r, y - r, x + r, y + r), outline=color, width=width)


def _stars(draw: ImageDraw.ImageDraw, size: int, rng: random.Random, color: Color) -> None:
    for _ in range(18):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.02, 0.05) * size
        turn = rng.uniform(0, math.pi)
        points = [
            (
                x + (r if i % 2 == 0 else r * 0.45) * math.cos(turn + i * math.pi / 5),
                y + (r if i % 2 == 0 else r * 0.45) * math.sin(turn + i * math.pi / 5),
            )
            for i in range(10)
        ]
        draw.polygon(points, fill=color)


def _diamonds(draw: ImageDraw.ImageDraw, size: int, rng: random.Random, color: Color) -> None:
    step = size / rng.choice([5, 6, 7])
    r = step * rng.uniform(0.12, 0.22)
    shift = rng.uniform(0, step)
    for row in range(-1, int(size / step) + 2):
        for col in range(-1, int(size / step) + 2):
            x = col * step + shift + (step / 2 if row % 2 else 0)
            y = row * step + shift
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=color)


def _stripes(draw: ImageDraw.ImageDraw, size: int, rng: random.Random, color: Color) -> None:
    step = size / rng.choice([6, 8, 10])
    width = max(1, round(step * rng.uniform(0.2, 0.4)))
    slope = rng.choice([-1, 1])
    offset = rng.uniform(0, step)
    for i in range(-int(size / step) - 2, int(2 * size / step) + 2):
        x = i * step + offset
        draw.line([(x, 0), (x + slope * size, size)], fill=color, width=width)


PATTERNS: tuple[Callable[[ImageDraw.ImageDraw, int, random.Random, Color], None], ...] = (
    _dots,
    _stars,
    _stripes,
    _rings,
    _diamonds,
)


def _background(size: int, hue: float, pattern_index: int, rng: random.Random) -> Image.Image:
    """A two-colour gradient at a random angle, overlaid with one of ``PATTERNS``.

    The gradient is built at 64×64 (cut from a 91×91 ramp, 91 ≈ 64·√2, so any
    rotation still covers the cut) and scaled up: it is smooth enough that
    nearest-neighbour scaling shows no steps, and it is much faster than bilinear.
    """
    top = _hsv(hue, rng.uniform(0.18, 0.3), 0.99)
    bottom = _hsv(hue + rng.uniform(0.04, 0.12), rng.uniform(0.38, 0.5), 0.92)
    ramp = Image.linear_gradient("L").resize((91, 91), Image.Resampling.BILINEAR)
    ramp = ramp.rotate(rng.uniform(-40, 40), resample=Image.Resampling.BILINEAR).crop((13, 13, 77, 77))
    channels = [
        ramp.point([a + (b - a) * i // 255 for i in range(256)]) for a, b in zip(top, bottom, strict=True)
    ]
    image = Image.merge("RGB", channels).resize((size, size), Image.Resampling.NEAREST)
    pattern_color = _hsv(hue, 0.12, 1.0) if rng.random() < 0.6 else _hsv(hue + 0.05, 0.45, 0.86)
    PATTERNS[pattern_index % len(PATTERNS)](ImageDraw.Draw(image), size, rng, pattern_color)
    return image


# Composition ----------------------------------------------------------------


def _draw_animal(
    draw: ImageDraw.ImageDraw, animal: str, side: int, rng: random.Random, shadow: Color
) -> None:
    """Fit the animal, tilted and jittered, above the label band, with a drop shadow."""
    drawer = DRAWERS[animal]
    angle = rng.uniform(-12, 12)
    variant = rng.getrandbits(64)
    probe = Pen(None, scale=1.0, angle=angle)
    drawer(probe, random.Random(variant))
    x0, y0, x1, y1 = probe.bounds

    box_top, box_w, box_h = side * 0.1, side * 0.8, side * 0.7
    scale = min(box_w / (x1 - x0), box_h / (y1 - y0)) * rng.uniform(0.84, 1.0)
    cx = side / 2 + rng.uniform(-0.06, 0.06) * side
    cy = box_top + box_h / 2 + rng.uniform(-0.03, 0.03) * side
    ox, oy = cx - (x0 + x1) / 2 * scale, cy - (y0 + y1) / 2 * scale
    offset = side * 0.012
    drawer(Pen(draw, scale, (ox + offset, oy + offset), angle, tint=shadow), random.Random(variant))
    drawer(Pen(draw, scale, (ox, oy), angle), random.Random(variant))


def _pill(draw: ImageDraw.ImageDraw, xy: Point, text: str, font_px: float, *, centred: bool) -> None:
    """Dark text on a white rounded label at ``xy`` (its centre, or its top-left corner)."""
    font = ImageFont.load_default(size=max(7, round(font_px)))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    w, h = x1 - x0, y1 - y0
    pad_x, pad_y = max(2.0, h * 0.6), max(1.0, h * 0.35)
    left, top = (xy[0] - w / 2 - pad_x, xy[1] - h / 2 - pad_y) if centred else xy
    box = (left, top, left + w + 2 * pad_x, top + h + 2 * pad_y)
    draw.rounded_rectangle(
        box, radius=(box[3] - box[1]) / 2, fill=WHITE, outline=INK, width=max(1, round(font_px / 14))
    )
    draw.text((left + pad_x - x0, top + pad_y - y0), text, font=font, fill=INK)


def _digest(*parts: bytes) -> bytes:
    hasher = hashlib.sha256(b"menagerie-render-v1")
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.digest()


def caption(index: int) -> str:
    """The corner caption of image `index`: the API's own numbering, from 0 (image 0.png is #0)."""
    return f"#{index}"


def render_png(animal: str, *, seed: bytes, index: int, size: int = 512) -> bytes:
    """Render image ``index`` (0-based) of a job as a ``size``×``size`` RGB PNG.

    Raises ``ValueError`` for an animal not in ``DRAWERS``, a negative index or
    a size below 16 pixels.
    """
    if animal not in DRAWERS:
        raise ValueError(f"unknown animal {animal!r}; expected one of {', '.join(DRAWERS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be >= {_MIN_SIZE}, got {size}")

    name = animal.encode()
    job_rng = random.Random(_digest(seed, name))
    rng = random.Random(_digest(seed, name, str(index).encode()))
    hue = job_rng.random() + index * _GOLDEN
    pattern = job_rng.randrange(len(PATTERNS)) + index

    supersample = 2 if size >= 256 else 4
    side = size * supersample
    image = _background(side, hue, pattern, rng)
    draw = ImageDraw.Draw(image)
    _draw_animal(draw, animal, side, rng, shadow=_hsv(hue + 0.05, 0.45, 0.72))
    _pill(draw, (side / 2, side * 0.905), animal.capitalize(), side * 0.075, centred=True)
    _pill(draw, (side * 0.035, side * 0.035), caption(index), side * 0.055, centred=False)

    out = io.BytesIO()
    image.reduce(supersample).save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
