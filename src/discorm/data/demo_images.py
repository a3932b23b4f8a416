"""The built-in image-grounded demo set: preference pairs that only the image can decide.

Each row shows a small picture drawn with PIL (coloured shapes on a white ground) and asks about it: "What colour
is the shape?", "Which shape is shown?", "How many shapes are there?". The chosen answer describes the picture,
the rejected one names another colour, shape or count. Every answer text is chosen exactly as often as it is
rejected within each question, so the text alone carries no signal: a model that ignores the image is at chance.
The pictures are drawn deterministically from a seed; the train and test splits use different seeds, so no
picture of the test split is in the training split. ``demo_images_blank`` is the same set with every picture
replaced by a plain grey one of the same size: the control run, which should stay at chance.

Rows are sharegpt records (``conversations`` with an ``<image>`` placeholder, ``chosen``, ``rejected``,
``images``) and carry their pictures as PNG data URIs, so nothing is written to disk.
"""

from __future__ import annotations

import itertools
import random

from PIL import Image, ImageDraw

from discorm.data.images import IMAGE_PLACEHOLDER, data_uri

IMAGE_SIZE = 64
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
COUNTS = {1: "There is one shape.", 2: "There are two shapes.", 3: "There are three shapes.",
          4: "There are four shapes."}
BLANK = (128, 128, 128)
PER_KIND = {"train": 168, "test": 48}  # multiples of 12: every ordered answer pair equally often
QUESTIONS = {
    "colour": ("What colour is the shape?", "It is {}."),
    "shape": ("Which shape is shown?", "It is a {}."),
    "count": ("How many shapes are there?", "{}"),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _picture(rng: random.Random, shapes: list[str], colours: list[str]) -> Image.Image:
    """One shape per entry, at random non-overlapping places: a large one when alone, small ones for counts."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if len(shapes) == 1:
        side = rng.randint(IMAGE_SIZE // 3, IMAGE_SIZE * 2 // 3)
        x, y = rng.randint(2, IMAGE_SIZE - side - 2), rng.randint(2, IMAGE_SIZE - side - 2)
        _draw_shape(draw, shapes[0], (x, y, x + side, y + side), COLOURS[colours[0]])
        return image
    cells = rng.sample(list(itertools.product(range(2), range(2))), len(shapes))  # a 2x2 grid: never overlapping
    half = IMAGE_SIZE // 2
    for shape, colour, (row, col) in zip(shapes, colours, cells):
        side = rng.randint(half // 2, half - 6)
        x = col * half + rng.randint(2, half - side - 2)
        y = row * half + rng.randint(2, half - side - 2)
        _draw_shape(draw, shape, (x, y, x + side, y + side), COLOURS[colour])
    return image


def _answers(kind: str) -> list[str]:
    return {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(COUNTS)}[kind]


def _row(rng: random.Random, kind: str, truth, wrong, blank: bool) -> dict:
    if kind == "colour":
        image = _picture(rng, [rng.choice(SHAPES)], [truth])
    elif kind == "shape":
        image = _picture(rng, [truth], [rng.choice(list(COLOURS))])
    else:
        image = _picture(rng, [rng.choice(SHAPES) for _ in range(truth)], [rng.choice(list(COLOURS))] * truth)
    if blank:
        image = Image.new("RGB", image.size, BLANK)
    question, answer = QUESTIONS[kind]
    say = COUNTS.get if kind == "count" else str
    return {
        "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}{question}"}],
        "chosen": {"from": "gpt", "value": answer.format(say(truth))},
        "rejected": {"from": "gpt", "value": answer.format(say(wrong))},
        "images": [data_uri(image)],
    }


def image_rows(split: str = "train", seed: int = 50, blank: bool = False) -> list[dict]:
    """Image-grounded pairs (504 train / 144 test), a third of each question kind, shuffled. Within a kind the
    (true, wrong) answers cycle through every ordered pair of distinct answers equally often, so each answer is
    chosen as often as it is rejected. ``blank``: every picture is plain grey (the text-only control)."""
    rng = random.Random(seed if split == "train" else seed + 1000)
    out = []
    for kind in QUESTIONS:
        pairs = list(itertools.permutations(_answers(kind), 2))
        out += [_row(rng, kind, *pairs[i % len(pairs)], blank) for i in range(PER_KIND[split])]
    rng.shuffle(out)
    return out


def blank_rows(split: str = "train", seed: int = 50) -> list[dict]:
    """:func:`image_rows` with every picture blank (plain grey, same size)."""
    return image_rows(split, seed, blank=True)


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def captioned_picture(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A picture drawn like the demo set's (one to four shapes of one colour) and its caption as four words: the
    count, the colour, the shape (or "shapes" for several) and a full stop, e.g. ``["one", "red", "circle", "."]``.
    The built-in vision model's tower learns to see from these (``model/builtin.py``); no preference is involved."""
    count = rng.randint(1, 4)
    colour = rng.choice(list(COLOURS))
    shapes = [rng.choice(SHAPES) for _ in range(count)]
    image = _picture(rng, shapes, [colour] * count)
    return image, [NUMBER_WORDS[count], colour, shapes[0] if count == 1 else "shapes", "."]


BUILTIN = {"demo_images": image_rows, "demo_images_blank": blank_rows}  # `<name>_test`: the test split
