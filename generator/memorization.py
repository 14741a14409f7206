"""Memorization: does a generated image copy one of the model's training images?

For every generated image, its nearest training image by cosine similarity of
Inception-v3 pool features (2048-d, fid-helper's offline Inception, as FID uses),
centred on the training images' mean feature, and the SSIM of the pair. Centring
matters for chest X-rays: to an ImageNet network they all look alike (raw cosines
of different patients' images sit around 0.86), and the common part hides what
tells one image from another; without it a shifted copy scored barely above the
closest new patient (measured on public-cxr at 64², before the blur below: 0.948
against 0.923; centred, 0.777 against 0.735).

A pair is flagged when its cosine is above a threshold set from measurement: the
nearest-training cosines of held-out real images (real patients the model never
saw) show how close an honest new image can come, and the threshold sits a margin
above the highest of them.

Every image is prepared the same way before its features are taken (``prepare``):
grayscale, resized to the generated images' size (bicubic), the central
CROP_FRACTION kept, then a Gaussian blur of σ = BLUR_PER_PX × the larger side (1 px
at 64²). The crop keeps a few pixels of shift, and the band it brings in at one
edge, from dominating the features; the blur removes JPEG's 8-px blocks, which at
64² are an eighth of the image and, upsampled to Inception's 299², read as strong
texture (measured on public-cxr at 64², centred: a copy re-encoded at quality 75
and shifted 1 px scored 0.29 unblurred, 0.74 blurred, against 0.69 for the closest
held-out patient).

What it detects: near-copies of whole training images, also re-encoded (JPEG) and
shifted by a few pixels. What it cannot: copying of a part of an image (a region, a
device, a text marker), a patient's anatomy copied from another image of the same
patient, or identity leakage at similarities below the threshold; nor anything
about images outside the training set it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from generator.errors import NotEnoughDataError
from generator.metrics import compare, inception_features, to_unit_gray

CROP_FRACTION = 0.875
BLUR_PER_PX = 1 / 64
THRESHOLD_MARGIN = 0.02
# Queries compared with the training features per matrix product: bounds memory
# at BLOCK × training images floats.
BLOCK = 1024
NO_REFERENCES = "There are no reference features to compare with"
TOO_FEW_HELDOUT = "The threshold needs at least {minimum} held-out images, got {count}"
MIN_HELDOUT = 2
# The SSIM search compares every query with every training image: at 64² it costs a
# quarter of 128² and still tells a copy (SSIM near 1) from a new patient.
SSIM_SEARCH_SIZE = 64


def prepare(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Grayscale at ``size`` (width, height), its central CROP_FRACTION, blurred."""
    gray = image.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.BICUBIC)
    width, height = size
    left = round(width * (1 - CROP_FRACTION) / 2)
    top = round(height * (1 - CROP_FRACTION) / 2)
    cropped = gray.crop((left, top, width - left, height - top))
    return cropped.filter(ImageFilter.GaussianBlur(max(size) * BLUR_PER_PX))


def features(
    helper: object, images: Iterable[Image.Image], size: tuple[int, int]
) -> np.ndarray:
    """Inception pool features of the prepared images, one row each, float32."""
    prepared = (prepare(image, size) for image in images)
    return inception_features(helper, prepared).astype(np.float32)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1, so dot products are cosines."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Nearest:
    """For each query row: the index of its nearest reference row, and the cosine."""

    index: np.ndarray
    cosine: np.ndarray


def nearest(queries: np.ndarray, references: np.ndarray) -> Nearest:
    """Nearest reference row of each query row by cosine similarity (exact)."""
    if not len(references):
        raise NotEnoughDataError(NO_REFERENCES)
    refs = unit_rows(references)
    index, cosine = [], []
    for start in range(0, len(queries), BLOCK):
        sims = unit_rows(queries[start : start + BLOCK]) @ refs.T
        best = sims.argmax(axis=1)
        index.append(best)
        cosine.append(sims[np.arange(len(best)), best])
    if not index:
        return Nearest(np.zeros(0, dtype=int), np.zeros(0))
    return Nearest(np.concatenate(index), np.concatenate(cosine).astype(np.float64))


@dataclass(frozen=True)
class Threshold:
    """The cosine above which a pair is flagged, and the measurement behind it."""

    value: float
    heldout_images: int
    heldout_max: float
    heldout_p99: float
    heldout_median: float
    margin: float

    @property
    def rule(self) -> str:
        return (
            f"highest nearest-training cosine of {self.heldout_images} held-out real "
            f"images ({self.heldout_max:.4f}) + margin {self.margin}"
        )

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "rule": self.rule,
            "heldout_images": self.heldout_images,
            "heldout_max": self.heldout_max,
            "heldout_p99": self.heldout_p99,
            "heldout_median": self.heldout_median,
            "margin": self.margin,
        }


def threshold_from_heldout(
    heldout_cosines: np.ndarray, margin: float = THRESHOLD_MARGIN
) -> Threshold:
    """Above every held-out real image: their highest nearest-training cosine plus
    ``margin``. Real patients never trained on all sit below it."""
    if len(heldout_cosines) < MIN_HELDOUT:
        raise NotEnoughDataError(
            TOO_FEW_HELDOUT.format(minimum=MIN_HELDOUT, count=len(heldout_cosines))
        )
    return Threshold(
        value=float(heldout_cosines.max() + margin),
        heldout_images=len(heldout_cosines),
        heldout_max=float(heldout_cosines.max()),
        heldout_p99=float(np.percentile(heldout_cosines, 99)),
        heldout_median=float(np.median(heldout_cosines)),
        margin=margin,
    )


@dataclass(frozen=True)
class Check:
    """Every generated image's nearest training image and cosine; which are flagged."""

    nearest: Nearest
    threshold: Threshold

    @property
    def flagged(self) -> list[int]:
        """Indices of the generated images above the threshold, most similar first."""
        above = np.flatnonzero(self.nearest.cosine > self.threshold.value)
        return sorted(above.tolist(), key=lambda i: -self.nearest.cosine[i])


def check(
    generated: np.ndarray,
    training: np.ndarray,
    heldout: np.ndarray,
    margin: float = THRESHOLD_MARGIN,
) -> Check:
    """The memorization check on feature rows (``features``):

    1. every row is centred on the training rows' mean;
    2. the held-out real images' nearest-training cosines set the threshold;
    3. each generated image's nearest training image and cosine;
    4. the pairs above the threshold are the flagged ones.
    """
    centre = training.mean(axis=0)
    training = training - centre
    threshold = threshold_from_heldout(
        nearest(heldout - centre, training).cosine, margin
    )
    return Check(nearest(generated - centre, training), threshold)


def nearest_by_ssim(
    queries: Sequence[Image.Image],
    references: Sequence[Image.Image],
    size: int = SSIM_SEARCH_SIZE,
) -> Nearest:
    """Nearest reference image of each query by SSIM (pytorch-msssim's single-scale
    SSIM: 11-px Gaussian window, σ 1.5, data range 1), every image in luminance at
    ``size``² bicubic. ``cosine`` holds the SSIM, so ``threshold_from_heldout`` and
    ``Check`` apply unchanged."""
    if not len(references):
        raise NotEnoughDataError(NO_REFERENCES)
    import torch
    from pytorch_msssim import ssim

    refs = torch.from_numpy(
        np.stack([to_unit_gray(image, size) for image in references])
    ).float()[:, None]
    index, scores = [], []
    for image in queries:
        query = torch.from_numpy(to_unit_gray(image, size)).float()[None, None]
        values = ssim(query.expand_as(refs), refs, data_range=1.0, size_average=False)
        best = int(values.argmax())
        index.append(best)
        scores.append(float(values[best]))
    return Nearest(np.asarray(index, dtype=int), np.asarray(scores, dtype=np.float64))


def pair_ssim(
    generated: Image.Image, training: Image.Image, size: tuple[int, int]
) -> float:
    """SSIM of a pair under the fixed protocol (generator.metrics.compare), the
    training image first brought to the generated size as the features were."""
    gray = training.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.BICUBIC)
    return compare(generated, gray).ssim


def summary(cosines: Sequence[float]) -> dict:
    values = np.asarray(cosines, dtype=np.float64)
    if not len(values):
        return {"n": 0, "mean": None, "max": None}
    return {"n": len(values), "mean": float(values.mean()), "max": float(values.max())}
