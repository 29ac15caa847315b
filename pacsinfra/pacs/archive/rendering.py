"""Frames rendered for display (PS3.18 9.5 rendered resources, thumbnails): a decoded
frame through the Modality LUT (rescale) and a VOI window to 8 bits, cropped and scaled
to a viewport, encoded as JPEG, PNG or GIF by Pillow.

The window is the one asked for (the ``window`` parameter: center, width and function
``linear``, ``linear-exact`` or ``sigmoid``, PS3.3 C.11.2.1.2), else the instance's
first Window Center/Width (top level, or the shared functional groups of an enhanced
multi-frame image), else the frame's own minimum to maximum. MONOCHROME1 is inverted;
colour (RGB, YBR, palette) is shown as RGB without a window.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from pacsinfra.pacs.archive.pixels import PixelModule, decode

#: what rendered resources may be asked as, and Pillow's name for each
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
FUNCTIONS = ("linear", "linear-exact", "sigmoid")
MAX_SIDE = 4096  # the largest rendered width or height a request may ask for
THUMBNAIL_SIDE = 256  # a thumbnail's box when no viewport is given


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2) in rescaled (modality) values."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """Output size (the image is scaled to fit, its aspect kept), and an optional source
    region (sx, sy, sw, sh; a negative width or height flips)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderRequest:
    """What a client asked for: format, JPEG quality, window, viewport."""

    media: str = "image/jpeg"
    quality: int = 90
    window: Window | None = None
    viewport: Viewport | None = None


def _first(value: Any) -> float | None:
    """The first number of a (possibly multi-valued) DS/IS value."""
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def stored_window(header: Dataset) -> Window | None:
    """The instance's own first window, if it has a usable one."""
    center, width = _first(header.get("WindowCenter")), _first(header.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").lower().replace("_", "-")
    return Window(center, width, function if function in FUNCTIONS else "linear")


def apply_window(values: Any, window: Window, invert: bool = False) -> Any:
    """Rescaled values through ``window`` to 0..255 (uint8), per PS3.3 C.11.2.1.2."""
    import numpy as np

    c, w = window.center, max(window.width, 1e-6)
    x = values.astype(np.float64, copy=False)
    if window.function == "sigmoid":
        y = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -50, 50)))
    elif window.function == "linear-exact":
        y = np.clip((x - c) / w + 0.5, 0.0, 1.0) * 255.0
    else:
        w = max(w, 1.0)
        y = np.clip((x - (c - 0.5)) / max(w - 1.0, 1e-6) + 0.5, 0.0, 1.0) * 255.0
    out = np.rint(y).astype(np.uint8)
    return 255 - out if invert else out


def _grey(arr: Any, header: Dataset, window: Window | None) -> Any:
    import numpy as np

    slope = _first(header.get("RescaleSlope")) or 1.0
    intercept = _first(header.get("RescaleIntercept")) or 0.0
    values = arr.astype(np.float64) * slope + intercept
    chosen = window or stored_window(header)
    if chosen is None:
        lo, hi = float(values.min()), float(values.max())
        chosen = Window((lo + hi) / 2.0, max(hi - lo, 1.0), "linear-exact")
    invert = str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    return apply_window(values, chosen, invert)


def _colour(arr: Any, header: Dataset) -> Any:
    import numpy as np

    if str(header.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, header)
        top = float(arr.max()) or 1.0
        return np.rint(arr.astype(np.float64) * (255.0 / max(top, 255.0))).astype(np.uint8)
    if arr.dtype == np.uint8:
        return arr
    bits = int(header.get("BitsStored", 8) or 8)
    return np.clip(arr.astype(np.float64) / (2 ** bits - 1) * 255.0, 0, 255).astype(np.uint8)


def to_image(module: PixelModule, frame: bytes, window: Window | None) -> Any:
    """One stored frame as an 8-bit Pillow image (L or RGB)."""
    from PIL import Image

    arr = decode(module, frame)
    header = module.header
    palette = str(header.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
    if arr.ndim == 2 and not palette:
        return Image.fromarray(_grey(arr, header, window), mode="L")
    return Image.fromarray(_colour(arr, header), mode="RGB" if arr.ndim == 3 or palette
                           else "L")


def fit(image: Any, viewport: Viewport | None) -> Any:
    """``image`` cropped to the viewport's region and scaled to fit its box."""
    from PIL import Image, ImageOps

    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        box = (sx, sy, min(sx + abs(sw), image.width), min(sy + abs(sh), image.height))
        if box[0] >= box[2] or box[1] >= box[3]:
            raise ValueError("the viewport's region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = ImageOps.mirror(image)
        if sh < 0:
            image = ImageOps.flip(image)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image


def encode(image: Any, request: RenderRequest) -> bytes:
    """``image`` in the asked format."""
    out = io.BytesIO()
    kind = FORMATS[request.media]
    if kind == "JPEG":
        image.save(out, kind, quality=request.quality, optimize=False)
    elif kind == "PNG":
        image.save(out, kind, compress_level=3)
    else:
        image.save(out, kind)
    return out.getvalue()


def render(module: PixelModule, frame: bytes, request: RenderRequest) -> bytes:
    """A stored frame rendered as asked; raises DecodeError or ValueError."""
    return encode(fit(to_image(module, frame, request.window), request.viewport), request)


__all__ = ["FORMATS", "FUNCTIONS", "MAX_SIDE", "THUMBNAIL_SIDE", "RenderRequest", "Viewport",
           "Window", "apply_window", "render", "stored_window"]
