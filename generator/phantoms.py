"""Procedural chest phantoms whose caption controls attributes that can be measured.

A 64² grayscale "radiograph": a body, two dark lungs, a bright heart. Four binary
attributes change it in ways a fixed rule can read back from any image, generated or
drawn:

- cardiomegaly: the heart is wider than half the chest (it covers the inner lung
  borders); otherwise it is about a quarter of the chest;
- left pleural effusion: the lower zone of the patient's left lung (the image's right)
  is opaque;
- right pleural effusion: the same on the patient's right (the image's left);
- right upper lobe nodule: a bright round opacity in the upper zone of the patient's
  right lung.

Used by ``bench/learnability.py`` to prove that training learns text-to-image
conditioning: each generated image is checked for the attributes its prompt asked for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 64
ATTRIBUTES = ("cardiomegaly", "left_effusion", "right_effusion", "nodule")
# How each attribute is stated, present (True) or normal (False): the plain phrase
# first, then two paraphrases, as reports vary their wording. Training may draw any of
# them; the scored prompts use the plain phrase.
PHRASES = {
    ("cardiomegaly", True): (
        "cardiomegaly",
        "enlarged cardiac silhouette",
        "the heart is enlarged",
    ),
    ("cardiomegaly", False): (
        "normal heart size",
        "heart size is normal",
        "normal cardiac silhouette",
    ),
    ("left_effusion", True): (
        "left pleural effusion",
        "effusion at the left base",
        "left basal effusion",
    ),
    ("left_effusion", False): (
        "clear left lung base",
        "left costophrenic angle is sharp",
        "left base clear",
    ),
    ("right_effusion", True): (
        "right pleural effusion",
        "effusion at the right base",
        "right basal effusion",
    ),
    ("right_effusion", False): (
        "clear right lung base",
        "right costophrenic angle is sharp",
        "right base clear",
    ),
    ("nodule", True): (
        "right upper lobe nodule",
        "nodule in the right upper lobe",
        "right upper zone nodule",
    ),
    ("nodule", False): (
        "no pulmonary nodule",
        "no nodule",
        "no focal opacity",
    ),
}
WORDINGS = len(PHRASES["cardiomegaly", True])
NO_FINDING = "no acute findings"
NO_EFFUSION = "no pleural effusion"
# Caption styles: the attributes each one states even when normal. "present" names
# only the present findings (else "no acute findings"); "explicit" states every
# attribute; "reported" states the heart either way and the other findings only when
# present, saying "no pleural effusion" when neither base has one, as a short report
# would.
ALWAYS_STATED = {
    "present": (),
    "explicit": tuple(range(len(ATTRIBUTES))),
    "reported": (0,),
}
CAPTION_STYLES = tuple(ALWAYS_STATED)
BODY, LUNG, HEART, FLUID = 150, 40, 215, 175
# Image columns: the patient's left lung is on the image's right.
LUNG_CENTRES = {"right": 20, "left": 44}
HEART_ROWS = (31, 38)
BORDER_COLUMNS = (slice(21, 26), slice(42, 47))
BASE_ROWS = slice(43, 47)
NODULE_CENTRE = (20, 20)  # (column, row): the right lung's upper zone
NODULE_RADIUS = 4.5
THRESHOLD = (LUNG + BODY) / 2


@dataclass(frozen=True)
class Findings:
    cardiomegaly: bool
    left_effusion: bool
    right_effusion: bool
    nodule: bool = False

    def caption(
        self,
        order: tuple[int, ...] = tuple(range(len(ATTRIBUTES))),
        style: str = "present",
        wording: tuple[int, ...] = (0,) * len(ATTRIBUTES),
    ) -> str:
        """The prompt, its phrases in ``order`` (attribute indices; leaving one out
        leaves its phrase out), in one of CAPTION_STYLES (see ALWAYS_STATED).
        ``wording`` picks each attribute's plain phrase (0) or a paraphrase (1, 2).
        """
        if style not in CAPTION_STYLES:
            raise ValueError(f"style must be one of {CAPTION_STYLES}, got {style!r}")
        flags = self.as_tuple()
        stated = [i for i in order if flags[i] or i in ALWAYS_STATED[style]]
        phrases = [PHRASES[ATTRIBUTES[i], flags[i]][wording[i]] for i in stated]
        if style == "reported" and not (flags[1] or flags[2]):
            phrases.append(NO_EFFUSION)
        return ", ".join(phrases) or NO_FINDING

    def as_tuple(self) -> tuple[bool, ...]:
        return tuple(getattr(self, attribute) for attribute in ATTRIBUTES)


def all_findings() -> list[Findings]:
    """The sixteen combinations of the four attributes."""
    return [
        Findings(*flags)
        for flags in itertools.product((False, True), repeat=len(ATTRIBUTES))
    ]


def draw(findings: Findings, rng: np.random.Generator) -> Image.Image:
    """One phantom with small random shifts, sizes, contrast and noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dx, dy = rng.uniform(-1.5, 1.5, size=2)
    pixels = np.zeros((SIZE, SIZE))
    pixels[_ellipse(x, y, 32 + dx, 34 + dy, 27, 29)] = BODY
    for side, centre in LUNG_CENTRES.items():
        lung = _ellipse(x, y, centre + dx, 30 + dy, 9.5, 17)
        pixels[lung] = LUNG
        if getattr(findings, f"{side}_effusion"):
            level = 40 + dy + rng.uniform(-1, 1)
            pixels[lung & (y > level)] = FLUID
    if findings.nodule:
        column, row = NODULE_CENTRE
        radius = NODULE_RADIUS * rng.uniform(0.9, 1.1)
        pixels[_ellipse(x, y, column + dx, row + dy, radius, radius)] = HEART
    half_width = (
        rng.uniform(13.5, 15.5) if findings.cardiomegaly else rng.uniform(6, 7.5)
    )
    pixels[_ellipse(x, y, 34 + dx, 34.5 + dy, half_width, 7)] = HEART
    pixels += rng.normal(0, 4, size=pixels.shape)
    pixels = pixels * rng.uniform(0.93, 1.07)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def _ellipse(x, y, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def measure(image: Image.Image) -> Findings:
    """Read the four attributes back from an image by fixed intensity rules."""
    gray = image.convert("L")
    if gray.size != (SIZE, SIZE):
        gray = gray.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    pixels = np.asarray(gray, dtype=np.float64)
    rows = slice(*HEART_ROWS)
    borders = [pixels[rows, columns].mean() for columns in BORDER_COLUMNS]
    bases = {
        side: pixels[BASE_ROWS, centre - 4 : centre + 5].mean()
        for side, centre in LUNG_CENTRES.items()
    }
    column, row = NODULE_CENTRE
    nodule = pixels[row - 2 : row + 3, column - 2 : column + 3].mean()
    return Findings(
        cardiomegaly=min(borders) > THRESHOLD,
        left_effusion=bases["left"] > THRESHOLD,
        right_effusion=bases["right"] > THRESHOLD,
        nodule=nodule > THRESHOLD,
    )


def attribute_hits(asked: Findings, seen: Findings) -> list[bool]:
    """Per attribute: does the image show what the prompt asked for?"""
    return [a == s for a, s in zip(asked.as_tuple(), seen.as_tuple(), strict=True)]
