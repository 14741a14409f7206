"""Training data as tensors: pixels through the pipeline's image processor, token
ids as the pipeline makes them, seeded caption dropout and seeded random crops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image


@dataclass(frozen=True)
class TrainingExample:
    """One image and the caption it should be generated from. The image is a path,
    a PIL image, or a function that opens it as a binary file (for images kept in
    object storage, where there is no path)."""

    image: Path | str | Image.Image | Callable[[], BinaryIO]
    caption: str


def open_rgb(image: Path | str | Image.Image | Callable[[], BinaryIO]) -> Image.Image:
    """The example's image as an RGB PIL image, whatever form it was given in."""
    if callable(image):
        with image() as stream, Image.open(stream) as handle:
            return handle.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as handle:
        return handle.convert("RGB")


def example_tensors(
    examples: Sequence[TrainingExample], resolution: int
) -> torch.Tensor:
    """Images as RGB in [-1, 1] at ``resolution``², bicubic, shape (N, 3, H, W):
    the pipeline's own VaeImageProcessor does the resizing and scaling."""
    processor = VaeImageProcessor(vae_scale_factor=1, resample="bicubic")
    return torch.cat(
        [
            processor.preprocess(open_rgb(example.image), resolution, resolution)
            for example in examples
        ]
    )


def tokenize(tokenizer: object, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded and cut to the text encoder's window, as the pipeline does."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def drop_captions(
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    rate: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each row replaced by the empty prompt's ids with probability ``rate``."""
    dropped = torch.rand(len(token_ids), generator=generator) < rate
    return torch.where(dropped[:, None], empty_ids, token_ids)


def random_crops(
    pixels: torch.Tensor, size: int, generator: torch.Generator
) -> torch.Tensor:
    """One ``size``² crop per image at offsets drawn from ``generator``."""
    height, width = pixels.shape[-2:]
    tops = torch.randint(0, height - size + 1, (len(pixels),), generator=generator)
    lefts = torch.randint(0, width - size + 1, (len(pixels),), generator=generator)
    corners = zip(tops.tolist(), lefts.tolist(), strict=True)
    return torch.stack(
        [
            image[:, top : top + size, left : left + size]
            for image, (top, left) in zip(pixels, corners, strict=True)
        ]
    )
