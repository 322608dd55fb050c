"""Catalogue of animals the service can draw. Every provider draws every one: an HTTP model
from the prompt that names it, the local renderer from a drawing of its own for each."""

ANIMALS: tuple[str, ...] = (
    "bear",
    "cat",
    "dog",
    "fox",
    "frog",
    "lion",
    "owl",
    "panda",
    "penguin",
    "pig",
    "rabbit",
    "tiger",
)
