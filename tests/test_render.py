"""Tests for the local renderer (app.providers.render) and the animal catalogue."""

from __future__ import annotations

import io
import itertools
import struct

import pytest
from PIL import Image, ImageChops

from app.images.animals import ANIMALS
from app.images.providers.render import DRAWERS, caption, render_png

SEED = bytes.fromhex("5f0c1b9e2a7d4c3e8f6a1b2c3d4e5f60")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def changed_fraction(a: bytes, b: bytes) -> float:
    """Share of pixels whose colour differs clearly (summed channel difference above 30)."""
    first, second = decode(a), decode(b)
    diff = ImageChops.difference(first, second)
    channels = diff.split()
    total = ImageChops.add(ImageChops.add(channels[0], channels[1]), channels[2])
    changed = total.point(lambda v: 255 if v > 30 else 0).histogram()[255]
    return changed / (first.width * first.height)


def chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


@pytest.mark.parametrize("size", [64, 512])
@pytest.mark.parametrize("animal", ANIMALS)
def test_every_animal_renders_an_rgb_png_of_the_requested_size(animal: str, size: int) -> None:
    """Every catalogued animal renders as a decodable RGB PNG of exactly size×size pixels."""
    image = decode(render_png(animal, seed=SEED, index=0, size=size))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == (size, size)


def test_png_carries_no_metadata() -> None:
    """The PNG holds only IHDR, IDAT and IEND chunks, so no timestamp or text can vary the bytes."""
    types = chunk_types(render_png("owl", seed=SEED, index=2, size=128))
    assert set(types) == {b"IHDR", b"IDAT", b"IEND"}


@pytest.mark.parametrize("animal", ["cat", "penguin"])
def test_same_inputs_give_identical_bytes(animal: str) -> None:
    """Rendering the same (animal, seed, index, size) twice gives byte-identical PNGs."""
    first = render_png(animal, seed=SEED, index=3, size=256)
    second = render_png(animal, seed=SEED, index=3, size=256)
    assert first == second


def test_images_of_one_job_differ_visibly() -> None:
    """Each index of one seed gives a different PNG in which most pixels clearly change colour."""
    images = [render_png("fox", seed=SEED, index=index, size=128) for index in range(4)]
    for a, b in itertools.combinations(images, 2):
        assert a != b
        assert changed_fraction(a, b) > 0.3


def test_different_seeds_give_different_images() -> None:
    """The same animal and index under two seeds gives two different PNGs."""
    first = render_png("bear", seed=SEED, index=0, size=128)
    second = render_png("bear", seed=b"another job", index=0, size=128)
    assert first != second
    assert changed_fraction(first, second) > 0.1


@pytest.mark.parametrize("animal", ["unicorn", "", "Cat", "cats"])
def test_unknown_animal_raises_value_error(animal: str) -> None:
    """An animal name the renderer has no drawing for raises ValueError."""
    with pytest.raises(ValueError, match="unknown animal"):
        render_png(animal, seed=SEED, index=0)


@pytest.mark.parametrize(("index", "size"), [(-1, 64), (0, 15), (0, 0)])
def test_negative_index_or_tiny_size_raises_value_error(index: int, size: int) -> None:
    """A negative index or a size below 16 pixels raises ValueError instead of drawing garbage."""
    with pytest.raises(ValueError):
        render_png("cat", seed=SEED, index=index, size=size)


def test_catalogue_is_exactly_the_renderers_animals_in_order() -> None:
    """ANIMALS is sorted, free of duplicates and lists exactly the animals the renderer can draw."""
    assert list(ANIMALS) == sorted(set(ANIMALS))
    assert set(ANIMALS) == set(DRAWERS)


def test_catalogue_names_are_lowercase_single_words() -> None:
    """Every catalogue name is a lowercase ASCII word, usable as-is in URLs and JSON."""
    for name in ANIMALS:
        assert name.isascii() and name.isalpha() and name.islower()


def test_captions_number_images_as_their_urls_do() -> None:
    """Image 0.png is captioned #0 and 3.png #3: the picture and its URL use one numbering."""
    assert [caption(index) for index in (0, 3)] == ["#0", "#3"]
