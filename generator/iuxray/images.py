"""Check that bytes are a sound PNG and make the 256² grayscale training derivative.

Checks, in order: the PNG signature (a JPEG or text named .png is refused), the
declared dimensions against a pixel budget before any pixel is decoded (a 100000² header
is a decompression bomb), the chunk CRCs (``verify``), then a full decode, which catches
truncated files. The derivative squashes the whole film to 256×256 without cropping,
as the prototype did: the aspect ratio of these films is 0.8-1.2, and a crop would cut
the costophrenic angles.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from generator.errors import GeneratorError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 40_000_000  # the largest Open-i film is about 3000 x 3000
DERIVATIVE_SIZE = 256

NOT_PNG = "not a PNG file (starts with {head!r})"
TOO_MANY_PIXELS = "image is {width}x{height}, over the {limit}-pixel limit"
CORRUPT = "corrupt PNG: {error}"
BOMB = "decompression bomb refused: {error}"
TRUNCATED = "truncated or undecodable PNG: {error}"
UNSUPPORTED_MODE = "unsupported PNG pixel mode {mode!r}"


class ImageRejected(GeneratorError, ValueError):
    """The bytes are not a PNG this import accepts; the message says why."""


@dataclass(frozen=True)
class CheckedImage:
    width: int
    height: int
    sha256: str
    derivative_png: bytes


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open and verify the PNG; every failure is an ImageRejected naming the cause."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageRejected(NOT_PNG.format(head=data[:8]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=["PNG"])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    TOO_MANY_PIXELS.format(width=width, height=height, limit=max_pixels)
                )
            image.verify()
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected(BOMB.format(error=error)) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageRejected(CORRUPT.format(error=error)) from None
    return Image.open(io.BytesIO(data), formats=["PNG"])


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit L; 16-bit films are scaled by their bit depth, never clipped."""
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I", "I;16L"):
        pixels = np.asarray(image, dtype=np.float32)
        scale = 255.0 / max(float(pixels.max()), 1.0)
        return Image.fromarray((pixels * scale).round().astype(np.uint8), mode="L")
    if image.mode in ("1", "P", "LA", "RGB", "RGBA", "PA"):
        return image.convert("L")
    raise ImageRejected(UNSUPPORTED_MODE.format(mode=image.mode))


def image_check(data: bytes, *, max_pixels: int = MAX_PIXELS) -> CheckedImage:
    """Validate ``data`` as a PNG and build its 256² grayscale derivative."""
    image = open_checked(data, max_pixels)
    width, height = image.size
    try:
        image.load()
        gray = to_grayscale(image)
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(TRUNCATED.format(error=error)) from None
    # reduce() averages factor x factor boxes (a cheap, alias-free downscale to the
    # nearest size >= 256); LANCZOS then only fixes the aspect on a small image.
    factor = max(1, min(width, height) // DERIVATIVE_SIZE)
    small = gray.reduce(factor) if factor > 1 else gray
    small = small.resize((DERIVATIVE_SIZE, DERIVATIVE_SIZE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", compress_level=6)
    return CheckedImage(
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        derivative_png=buffer.getvalue(),
    )
