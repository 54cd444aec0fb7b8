"""Captioned image data for the text-image tasks (contrastive, autoencoder, text_to_image): the [data]
section they share, the training set, the evaluation sets and what each source knows of its images.

- shapes: the procedural set of data/shapes.py. Evaluation reads one-object images (every attribute of
  the image is in its caption, so a reader can check them): "seen" from the test split (shape-colour
  pairs seen in training, new images), "heldout" from the held-out pairs; the reference images of
  FID and of the attribute reader are one-object training images.
- digits: scikit-learn's digits captioned from label, thickness and slant; "seen" is the test split.
- folder: a user folder with metadata.jsonl; "seen" is its test split; no attributes, so no reader.
"""

from dataclasses import dataclass

import torch

from diffspace.config import choice
from diffspace.data import captions as cap
from diffspace.data.shapes import (
    BACKGROUND,
    COLOURS,
    PLACES,
    SHAPES,
    SIZES,
    make_shapes,
    single_object_prompts,
)
from diffspace.types import UserError


@dataclass
class CaptionDataConfig:
    name: str = choice("shapes", "shapes", "digits", "folder")
    file: str = ""  # name = "folder": the folder holding the images and metadata.jsonl
    n_train: int = 20_000  # shapes: training images
    size: int = 32  # shapes: image side (16 or 32)
    p_two: float = 0.25  # shapes: fraction of training images with two objects

    def validate(self, src: str) -> None:
        if self.name == "folder" and not self.file:
            raise UserError(f"{src}: data.name = 'folder' needs data.file = the folder with metadata.jsonl")
        if self.n_train <= 0 or self.size not in (16, 32) or not 0 <= self.p_two <= 1:
            raise UserError(f"{src}: data needs n_train > 0, size 16 or 32 and 0 <= p_two <= 1; got "
                            f"n_train = {self.n_train}, size = {self.size}, p_two = {self.p_two}")


@dataclass
class CaptionEvalConfig:
    """[eval] of the encoder and autoencoder tasks on captioned images."""

    n: int = 1000  # images per evaluation set


# (attribute, number of values) per column of a source's `attrs` that evaluation reads
ATTRIBUTE_GROUPS = {
    "shapes": (("shape", len(SHAPES)), ("colour", len(COLOURS)), ("size", len(SIZES)),
               ("place", len(PLACES))),
    "digits": (("digit", len(cap.DIGIT_NAMES)), ("thickness", len(cap.THICKNESS)), ("slant", len(cap.SLANT))),
    "folder": (),
}


def _folder(d: CaptionDataConfig, split_name: str, seed: int) -> cap.CaptionedImages:
    return cap.split_captioned(cap.load_captioned_folder(d.file), split_name, seed)


def load_train(d: CaptionDataConfig, seed: int) -> cap.CaptionedImages:
    """The training images with their captions."""
    if d.name == "shapes":
        return make_shapes(d.n_train, "train", seed, d.size, d.p_two)
    if d.name == "digits":
        return cap.load_captioned_digits("train", seed)
    return _folder(d, "train", seed)


def _first(data: cap.CaptionedImages, n: int) -> cap.CaptionedImages:
    return data.subset(torch.arange(min(n, len(data))))


def eval_sets(d: CaptionDataConfig, seed: int, n: int) -> dict[str, cap.CaptionedImages]:
    """Up to n real images per evaluation set, by name (see the module docstring)."""
    if d.name == "shapes":
        return {split_name: make_shapes(n, source, seed, d.size, p_two=0.0)
                for split_name, source in (("seen", "test"), ("heldout", "heldout"))}
    if d.name == "digits":
        return {"seen": _first(cap.load_captioned_digits("test", seed), n)}
    return {"seen": _first(_folder(d, "test", seed), n)}


def reference_set(d: CaptionDataConfig, seed: int, n: int) -> cap.CaptionedImages:
    """Up to n real training images of the kind evaluation generates: the FID reference and what the
    attribute reader learns from."""
    if d.name == "shapes":
        return make_shapes(n, "train", seed, d.size, p_two=0.0)
    return _first(load_train(d, seed), n)


def attribute_columns(d: CaptionDataConfig, data: cap.CaptionedImages) -> torch.Tensor:
    """The attrs columns (N, A) that ATTRIBUTE_GROUPS name (the first object's, for shapes)."""
    return data.attrs[:, :len(ATTRIBUTE_GROUPS[d.name])]


def colour_blind(d: CaptionDataConfig) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """The attributes the reader reads colour-blind, and the background colour in [-1, 1] that defines the
    foreground they are read from: the shapes' shape (a reader trained on seen shape-colour pairs would
    read it from colour); none for the other sources."""
    if d.name == "shapes":
        return ("shape",), tuple(2 * c - 1 for c in BACKGROUND)
    return (), None


def prompt_grid(d: CaptionDataConfig) -> tuple[list[str], torch.Tensor] | None:
    """Every caption of one image's attributes and those attributes (M, A), for zero-shot reading; None for
    a source without attributes."""
    return {"shapes": single_object_prompts, "digits": cap.digit_prompts}.get(d.name, lambda: None)()
