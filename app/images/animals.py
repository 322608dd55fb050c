"""Catalogue of animals the service can draw; each name is a key of the local renderer."""

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
