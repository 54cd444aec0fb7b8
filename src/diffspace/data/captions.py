"""Captioned images for text-to-image models: the container, tokenized captions, caption dropout, and
two sources (the procedural shapes are in data/shapes.py):

- digits (scikit-learn, 8x8 grey) captioned from the label and two measured attributes of the stroke:
  thickness (ink mass against the median of its class, in thirds) and slant (the shear -mu11 / mu02 of
  the image's central moments, as in moment-based deskewing);
- a user folder of images with a `metadata.jsonl` caption file, one JSON object a line with keys
  `file_name` (relative to the folder) and `text`; a file named on several lines gets several captions.
  Its images follow the rules of `data.images.read_images` (any Pillow format, alpha on white, one
  size, unreadable files skipped with their captions).

Images are float32 (N, C, H, W) in [-1, 1] as in data/images.py. Captions become padded token ids
(N, L) with a padding mask (N, L), True on real tokens, through the tokenizers of data/text.py.
Caption dropout for classifier-free guidance ([CFG] arXiv 2207.12598 Sec. 3.2, with captions in place
of labels) turns a caption into the null caption: an all-False mask, no token at all.
"""

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffspace import rng
from diffspace.data.images import _split, load_digits, read_images
from diffspace.data.text import ByteTokenizer, CharTokenizer, make_tokenizer
from diffspace.types import UserError

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS = ("thin", "regular", "thick")
SLANT = ("slanted left", "upright", "slanted right")
SLANT_LIMIT = 0.1  # |shear| up to this is upright (about 6 degrees)
DIGIT_TEMPLATES = ("a {thickness} digit {digit}, {slant}", "the number {name}, {thickness} and {slant}",
                   "{slant} {thickness} {name}")


@dataclass
class CaptionedImages:
    """x (N, C, H, W) float32 in [-1, 1]; captions[i] are the phrasings of image i (at least one);
    attrs (N, A) long ground-truth attributes named by attr_names (-1 = absent), or None."""

    x: Tensor
    captions: list[tuple[str, ...]]
    attrs: Tensor | None = None
    attr_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: Tensor) -> "CaptionedImages":
        return CaptionedImages(self.x[idx], [self.captions[i] for i in idx.tolist()],
                               None if self.attrs is None else self.attrs[idx], self.attr_names)

    def pick(self, idx: Tensor, generator: rng.Generator) -> list[str]:
        """One phrasing per image of `idx`, drawn uniformly among its captions."""
        u = rng.rand((len(idx),), generator, torch.float64).tolist()
        return [self.captions[i][int(v * len(self.captions[i]))]
                for i, v in zip(idx.tolist(), u, strict=True)]


def split_captioned(data: CaptionedImages, split: str, seed: int = 0,
                    test_fraction: float = 0.2) -> CaptionedImages:
    """The train/test/all split of data/images.py (the same seeded permutation)."""
    _, idx = _split(data.x, torch.arange(len(data)), split, seed, test_fraction)
    return data.subset(idx)


def tokenize_captions(tok, texts: list[str], context_len: int) -> tuple[Tensor, Tensor]:
    """ids (N, context_len) long padded with 0, and mask (N, context_len) bool, True on real tokens.

    Raises UserError for an empty (or blank) caption and for one longer than context_len tokens.
    """
    ids = torch.zeros(len(texts), context_len, dtype=torch.long)
    lengths = torch.zeros(len(texts), dtype=torch.long)
    for i, text in enumerate(texts):
        if not text.strip():
            raise UserError(f"caption {i} is empty: a prompt needs at least one non-blank character")
        tokens = tok.encode(text)
        if len(tokens) > context_len:
            raise UserError(f"prompt {text[:40]!r}{'...' if len(text) > 40 else ''} is {len(tokens)} tokens "
                            f"long ({tok.name} tokenizer); the text context holds {context_len}")
        ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        lengths[i] = len(tokens)
    return ids, torch.arange(context_len)[None] < lengths[:, None]


def drop_captions(mask: Tensor, p: float, generator: rng.Generator) -> Tensor:
    """[CFG] caption dropout: each row of mask (B, L) becomes all False (the null caption) with
    probability p, one uniform draw per row. Raises UserError unless 0 <= p <= 1."""
    if not 0 <= p <= 1:
        raise UserError(f"caption dropout rate must be in [0, 1], got {p}")
    drop = rng.rand((mask.shape[0],), generator, device=mask.device) < p
    return mask & ~drop[:, None]


CAPTION_TOKENIZERS = ("char", "byte")  # what a caption tokenizer may be (both are stored whole with a run)


def caption_tokenizer(kind: str, data: CaptionedImages) -> tuple[object, int]:
    """A tokenizer of `kind` (char: the alphabet of every phrasing of data; byte) and the text context: the
    longest caption in tokens, rounded up to a multiple of 8."""
    if kind not in CAPTION_TOKENIZERS:
        raise UserError(f"caption tokenizer {kind!r} is not one of {', '.join(CAPTION_TOKENIZERS)}")
    texts = [c for caps in data.captions for c in caps]
    tok = make_tokenizer(kind, [t.encode() for t in texts])
    return tok, 8 * -(-max(len(tok.encode(t)) for t in texts) // 8)


def tokenizer_state(tok, context_len: int) -> dict:
    """What rebuilds a caption tokenizer without its data (JSON): kind, alphabet (char) and context."""
    state = {"kind": tok.name, "context_len": context_len}
    return state | ({"alphabet": "".join(tok.chars)} if tok.name == "char" else {})


def tokenizer_from_state(state: dict) -> tuple[object, int]:
    """(tokenizer, context_len) of a `tokenizer_state`; UserError for a kind it does not know."""
    if state.get("kind") == "char":
        return CharTokenizer([state["alphabet"].encode()]), state["context_len"]
    if state.get("kind") == "byte":
        return ByteTokenizer(), state["context_len"]
    raise UserError(f"stored caption tokenizer {state.get('kind')!r} is not one of "
                    f"{', '.join(CAPTION_TOKENIZERS)}")


def stroke_measures(x: Tensor) -> tuple[Tensor, Tensor]:
    """Ink mass m00 (N,) and slant -mu11 / mu02 (N,) of grey images (N, 1, H, W) in [-1, 1].

    Ink is (x + 1) / 2; mu are central moments with x to the right and y (rows) downwards, so a stroke
    whose top leans right has mu11 < 0: slant > 0 means slanted right (horizontal shift per row).
    """
    ink = (x[:, 0].double() + 1) / 2  # (N, H, W)
    ys, xs = torch.meshgrid(torch.arange(ink.shape[1], dtype=torch.float64),
                            torch.arange(ink.shape[2], dtype=torch.float64), indexing="ij")
    m00 = ink.sum(dim=(1, 2))
    cx, cy = (ink * xs).sum(dim=(1, 2)) / m00, (ink * ys).sum(dim=(1, 2)) / m00
    mu11 = (ink * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum(dim=(1, 2))
    mu02 = (ink * (ys - cy[:, None, None]) ** 2).sum(dim=(1, 2))
    return m00, -mu11 / mu02


def _thirds(values: Tensor, groups: Tensor) -> Tensor:
    """0, 1, 2 for the lower, middle and upper third of `values` within each group (ranks)."""
    out = torch.empty_like(groups)
    for g in groups.unique():
        rows = (groups == g).nonzero().flatten()
        ranks = values[rows].argsort().argsort()
        out[rows] = (3 * ranks) // len(rows)
    return out


def describe_digit(attrs: list[int], template: int) -> str:
    """The caption of a digit's attributes (digit, thickness, slant) in phrasing `template`."""
    d, k, s = attrs
    return DIGIT_TEMPLATES[template].format(digit=d, name=DIGIT_NAMES[d], thickness=THICKNESS[k],
                                            slant=SLANT[s])


def digit_prompts(template: int = 0) -> tuple[list[str], Tensor]:
    """Every digit caption (digit x thickness x slant) and its attributes (M, 3), for zero-shot reading."""
    combos = list(itertools.product(range(len(DIGIT_NAMES)), range(len(THICKNESS)), range(len(SLANT))))
    return [describe_digit(list(c), template) for c in combos], torch.tensor(combos, dtype=torch.long)


def load_captioned_digits(split: str = "train", seed: int = 0) -> CaptionedImages:
    """scikit-learn digits (N, 1, 8, 8) captioned from label, thickness and slant; attrs (N, 3) =
    (digit, thickness index into THICKNESS, slant index into SLANT). Splits as `load_digits`."""
    x, y = load_digits("all")
    mass, slant = stroke_measures(x)
    thick = _thirds(mass, y)
    lean = (slant > -SLANT_LIMIT).long() + (slant > SLANT_LIMIT).long()
    attrs = torch.stack([y, thick, lean], dim=1)
    captions = [tuple(describe_digit(a, t) for t in range(len(DIGIT_TEMPLATES))) for a in attrs.tolist()]
    data = CaptionedImages(x, captions, attrs, ("digit", "thickness", "slant"))
    return split_captioned(data, split, seed)


def _read_metadata(path: Path) -> dict[str, list[str]]:
    """file_name -> its captions, in file order; one-line UserErrors for every malformed line."""
    captions: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) \
                or not isinstance(row.get("text"), str):
            raise UserError(f"{path} line {n}: expected an object with string keys 'file_name' and 'text'")
        if not row["text"].strip():
            raise UserError(f"{path} line {n}: the caption of {row['file_name']!r} is empty")
        captions.setdefault(row["file_name"], []).append(row["text"])
    if not captions:
        raise UserError(f"{path} holds no captions")
    return captions


def load_captioned_folder(path: str | Path) -> CaptionedImages:
    """Images named by `metadata.jsonl` in the folder (see the module docstring).

    Raises UserError for a missing folder or caption file, a malformed line, or a missing image.
    """
    root = Path(path)
    meta = root / "metadata.jsonl"
    if not root.is_dir():
        raise UserError(f"captioned image folder {root} does not exist or is not a folder")
    if not meta.is_file():
        raise UserError(f"captioned image folder {root} has no metadata.jsonl (lines of file_name and text)")
    captions = _read_metadata(meta)
    missing = [name for name in captions if not (root / name).is_file()]
    if missing:
        raise UserError(f"{meta} names image {missing[0]!r}, which does not exist in {root}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    files = [root / name for name in captions]
    x, kept = read_images(files)  # formats, transparency, sizes and unreadable files as in data/images.py
    texts = list(captions.values())
    return CaptionedImages(x, [tuple(texts[i]) for i in kept])
