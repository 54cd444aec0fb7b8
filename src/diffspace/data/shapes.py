"""A procedural set of captioned RGB images of coloured shapes with known attributes (no download).

Each image (side 32 by default; 16 for fast tests) holds one or two objects on a dark background. An
object has a shape (SHAPES), a colour (COLOURS), a size (SIZES) and a place on a 3x3 grid (PLACES);
two objects never share a place. Each caption names every attribute of every object, in one of the
phrasings of TEMPLATES, so an image has len(TEMPLATES) captions. Objects are drawn at 4x resolution
and box-filtered (anti-aliased edges), with a little jitter of place, size and colour.

Compositional generalization: the (shape, colour) pairs of HELD_OUT never occur in the "train" and
"test" splits; every image of the "heldout" split has a held-out pair as its first object (a second
object may be anything). Each pair of HELD_OUT has a different shape and a different colour, so every
shape and every colour is still seen in training. "train" and "test" are different images of the same
distribution. Image i of a split depends only on (seed, split, i): a longer set extends a shorter one.

Attributes are kept per image as `attrs` (N, 8) long: (shape, colour, size, place) of the first
object, then of the second (-1 when there is none), indices into the tuples below.
"""

import itertools

import numpy as np
import torch

from diffspace.data.captions import CaptionedImages
from diffspace.data.checks import check_count
from diffspace.types import UserError

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.15), "blue": (0.15, 0.3, 1.0),
           "yellow": (0.95, 0.9, 0.1), "purple": (0.65, 0.2, 0.9), "white": (0.95, 0.95, 0.95)}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
PLACES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
ATTRIBUTES = ("shape", "colour", "size", "place")
HELD_OUT = (("circle", "blue"), ("square", "red"), ("triangle", "yellow"), ("cross", "green"))
TEMPLATES = ("a {size} {colour} {shape} at the {place}",
             "a {colour} {shape}, {size}, at the {place}",
             "at the {place}, a {size} {colour} {shape}",
             "{size} {colour} {shape} in the {place}")
SPLITS = ("train", "test", "heldout")
BACKGROUND = (0.1, 0.1, 0.12)
RADIUS = (0.09, 0.15)  # object half-size as a fraction of the side, per size
SUPERSAMPLE = 4
CHUNK = 256  # images drawn per generator: image i depends only on (seed, split, i)


def _pairs(held_out: bool) -> np.ndarray:
    """(shape, colour) index pairs (P, 2): the held-out ones, or all the others."""
    held = {(SHAPES.index(s), COLOUR_NAMES.index(c)) for s, c in HELD_OUT}
    every = itertools.product(range(len(SHAPES)), range(len(COLOURS)))
    return np.array([p for p in every if (p in held) == held_out])


def _draw(rng: np.random.Generator, m: int, split: str, p_two: float) -> tuple[np.ndarray, np.ndarray]:
    """Attributes (m, 8) and jitter (m, 2, 4) = (dx, dy, radius factor, colour shift) per object."""
    seen, held = _pairs(False), _pairs(True)
    pool1, pool2 = (held, np.concatenate([seen, held])) if split == "heldout" else (seen, seen)
    first, second = pool1[rng.integers(0, len(pool1), m)], pool2[rng.integers(0, len(pool2), m)]
    size, place = rng.integers(0, len(SIZES), (m, 2)), rng.integers(0, len(PLACES), m)
    place2 = (place + 1 + rng.integers(0, len(PLACES) - 1, m)) % len(PLACES)  # a different place
    attrs = np.stack([first[:, 0], first[:, 1], size[:, 0], place,
                      second[:, 0], second[:, 1], size[:, 1], place2], axis=1)
    attrs[rng.random(m) >= p_two, 4:] = -1
    jitter = np.stack([rng.uniform(-0.04, 0.04, (m, 2)), rng.uniform(-0.04, 0.04, (m, 2)),
                       rng.uniform(0.9, 1.1, (m, 2)), rng.uniform(-0.05, 0.05, (m, 2))], axis=2)
    return attrs, jitter


_INSIDE = (  # per shape index: is a fine pixel at offset (dx, dy) from the centre inside? (half-size r)
    lambda ax, ay, dy, r: ax**2 + ay**2 <= r**2,  # circle
    lambda ax, ay, dy, r: np.maximum(ax, ay) <= 0.85 * r,  # square of about the circle's area
    lambda ax, ay, dy, r: (dy <= 0.8 * r) & (ax <= (dy + r) / 1.8),  # triangle: apex up, base 2r wide
    lambda ax, ay, dy, r: ((ax <= r) & (ay <= r / 3)) | ((ay <= r) & (ax <= r / 3)),  # cross (plus sign)
)


def _mask(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Coverage (m, S', S') of each object on the fine grid; dx (m, 1, S'), dy (m, S', 1), r (m, 1, 1);
    shape -1 (no object) covers nothing."""
    out = np.zeros((len(shape), dy.shape[1], dx.shape[2]), dtype=np.float32)
    for k, inside in enumerate(_INSIDE):
        rows = shape == k
        if rows.any():
            out[rows] = inside(np.abs(dx[rows]), np.abs(dy[rows]), dy[rows], r[rows])
    return out


def _render(attrs: np.ndarray, jitter: np.ndarray, side: int) -> np.ndarray:
    """Images (m, 3, side, side) in [0, 1]: objects composited in order over the background."""
    m, fine = len(attrs), side * SUPERSAMPLE
    grid = (np.arange(fine, dtype=np.float32) + 0.5) / SUPERSAMPLE  # fine pixel centres, in pixels
    img = np.broadcast_to(np.array(BACKGROUND, np.float32)[None, :, None, None], (m, 3, side, side)).copy()
    colours = np.array(list(COLOURS.values()), np.float32)
    for o in range(2):
        shape, colour, size, place = attrs[:, 4 * o: 4 * o + 4].T
        there = shape >= 0
        cx = (place % 3 + 0.5 + 3 * jitter[:, o, 0]) * side / 3
        cy = (place // 3 + 0.5 + 3 * jitter[:, o, 1]) * side / 3
        r = np.array(RADIUS, np.float32)[np.maximum(size, 0)] * jitter[:, o, 2] * side
        cover = _mask(np.where(there, shape, -1), grid[None, None] - cx[:, None, None],
                      grid[None, :, None] - cy[:, None, None], r[:, None, None])
        alpha = cover.reshape(m, side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(2, 4))[:, None]
        rgb = np.clip(colours[np.maximum(colour, 0)] + jitter[:, o, 3:4], 0, 1)[:, :, None, None]
        img = img * (1 - alpha) + rgb * alpha
    return img


def describe(attrs: np.ndarray | list[int], template: int) -> str:
    """The caption of one image's attributes (8,) in phrasing `template`; objects joined by "and"."""
    parts = []
    for o in range(2):
        shape, colour, size, place = (int(a) for a in attrs[4 * o: 4 * o + 4])
        if shape >= 0:
            parts.append(TEMPLATES[template].format(shape=SHAPES[shape], colour=COLOUR_NAMES[colour],
                                                    size=SIZES[size], place=PLACES[place]))
    return " and ".join(parts)


def make_shapes(n: int, split: str = "train", seed: int = 0, size: int = 32,
                p_two: float = 0.25) -> CaptionedImages:
    """n captioned images of `split` (train, test, heldout): x (n, 3, size, size) float32 in [-1, 1].

    size is 16 or 32; p_two is the fraction of images with two objects. Raises UserError on bad values.
    """
    if split not in SPLITS:
        raise UserError(f"shapes split {split!r} is not one of {', '.join(SPLITS)}")
    if size not in (16, 32):
        raise UserError(f"shapes image size must be 16 or 32, got {size}")
    check_count(n, "make_shapes", "n, the number of images,")
    if not 0 <= p_two <= 1:
        raise UserError(f"shapes needs 0 <= p_two <= 1, got p_two={p_two}")
    attrs, images = [], []
    for c in range(-(-n // CHUNK)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), c]))
        a, j = _draw(rng, CHUNK, split, p_two)
        keep = min(CHUNK, n - c * CHUNK)
        attrs.append(a[:keep])
        images.append(_render(a[:keep], j[:keep], size))
    attrs = np.concatenate(attrs)
    x = torch.from_numpy(np.concatenate(images)).float() * 2 - 1
    captions = [tuple(describe(a, k) for k in range(len(TEMPLATES))) for a in attrs]
    names = ATTRIBUTES + tuple(f"{a}2" for a in ATTRIBUTES)
    return CaptionedImages(x, captions, torch.from_numpy(attrs).long(), names)


def single_object_prompts(template: int = 0) -> tuple[list[str], torch.Tensor]:
    """Every one-object caption (shape x colour x size x place) and its attributes (M, 4), for zero-shot
    classification: the class of an image is the best-matching prompt."""
    counts = (len(SHAPES), len(COLOURS), len(SIZES), len(PLACES))
    combos = list(itertools.product(*(range(k) for k in counts)))
    prompts = [describe(list(c) + [-1] * 4, template) for c in combos]
    return prompts, torch.tensor(combos, dtype=torch.long)
