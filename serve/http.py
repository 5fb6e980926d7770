"""What lc-serve answers, apart from Ray: the checks on a request (content type, body size, the
image and its pixel count, ρ) and the answers (a palette PNG or JSON), so the rules are plain
functions tested without a server. Every refusal is an :class:`HTTPProblem` (status and one line).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from layercascade.contract import Rho, rho_from_text, rho_value
from layercascade.errors import LCError
from layercascade.model.data.images import ImageTooLarge, read_rgb
from layercascade.runtime.segment import encode
from layercascade.runtime.visualize import label_image

if TYPE_CHECKING:
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.result import CascadeResult

# Request bodies the service reads as image files: any image/* type, raw bytes, none given, and the
# type `curl --data-binary @photo.jpg` sends unless told otherwise (the body is the file either way).
OCTET_STREAM = "application/octet-stream"
CURL_DEFAULT = "application/x-www-form-urlencoded"
JSON = "application/json"
PNG = "image/png"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a replica. ``max_pixels`` is checked from the image's header,
    before a pixel is decoded, so a small file claiming a huge image (a decompression bomb) costs nothing."""

    max_body_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000


class HTTPProblem(Exception):
    """A request the service refuses: ``status`` (4xx/5xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    """The JSON body of every error answer: ``{"error": "..."}``."""
    return json.dumps({"error": message}).encode()


def check_content_type(value: str | None) -> None:
    """415 unless the body is declared an image, raw bytes, or not declared at all."""
    kind = (value or "").split(";")[0].strip().lower()
    if kind and kind not in (OCTET_STREAM, CURL_DEFAULT) and not kind.startswith("image/"):
        raise HTTPProblem(415, f"content type {kind!r} is not an image: send the image file's bytes as the body "
                               f"(curl --data-binary @photo.jpg; image/* or {OCTET_STREAM}), not a form or text")


def check_declared_length(value: str | None, limits: Limits) -> None:
    """413 when the Content-Length header alone is over the limit (the body is then not read)."""
    if value is not None and value.isdigit() and int(value) > limits.max_body_bytes:
        raise HTTPProblem(413, body_too_large(limits))


def body_too_large(limits: Limits) -> str:
    return f"request body over the limit of {limits.max_body_bytes:,} bytes (lc-serve --max-body-bytes)"


def decode_image(body: bytes, limits: Limits) -> np.ndarray:
    """The request's image as (H, W, 3) uint8 RGB, EXIF orientation applied (as lc-run reads files).
    400: empty or not a decodable image; 413: over the body or pixel limit."""
    if not body:
        raise HTTPProblem(400, "empty request body: send the image file's bytes")
    if len(body) > limits.max_body_bytes:
        raise HTTPProblem(413, body_too_large(limits))
    try:
        return read_rgb("request body", limits.max_pixels, data=body)
    except ImageTooLarge as error:
        raise HTTPProblem(413, str(error).replace("--max-pixels N", "lc-serve --max-pixels N")) from None
    except LCError as error:
        raise HTTPProblem(400, str(error)) from None


def parse_rho(value: str | None) -> Rho | None:
    """The query's ``rho``: ``R`` (both stages) or ``R2,R3`` (None: the model's default); 400 unless each is a
    number in (0, 1]."""
    if value is None:
        return None
    try:
        return rho_from_text(value)
    except LCError as error:
        raise HTTPProblem(400, str(error)) from None


def wants_json(accept: str | None) -> bool:
    """Whether the client asked for the JSON answer (``Accept: application/json``) over the PNG."""
    return JSON in (accept or "").lower()


def png_bytes(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """The palette PNG of a label map (the bytes lc-run writes as ``<stem>.png``: its encoder)."""
    return encode({"": label_image(labels, palette)})[""]


def segment_answer(result: CascadeResult, palette: np.ndarray, milliseconds: float,
                   as_json: bool) -> tuple[bytes, str, dict[str, str]]:
    """(body, media type, headers) of a segmentation: the palette PNG of the labels at the image's
    size, or JSON holding it in base64; either way the stage fractions and time in headers."""
    png = png_bytes(result.labels, palette)
    fractions = [round(float(f), 6) for f in result.stage_fractions]
    headers = {"X-LC-Stage-Fractions": ",".join(str(f) for f in fractions),
               "X-LC-Milliseconds": f"{milliseconds:.3f}"}
    if not as_json:
        return png, PNG, headers
    body = {"labels_png": base64.b64encode(png).decode(), "stage_fractions": fractions,
            "size": [int(result.labels.shape[0]), int(result.labels.shape[1])], "ms": round(milliseconds, 3)}
    return json.dumps(body).encode(), JSON, headers


def model_description(cascade: Cascade, precision: str | None) -> dict[str, Any]:
    """``GET /v1/model``: what the served model segments and how it runs."""
    return {
        "model": str(cascade.model_dir),
        "classes": cascade.classes,
        "palette": cascade.palette.tolist(),
        "input_size": list(cascade.input_size),
        "default_rho": rho_value(cascade.default_rho),  # one number, or [ρ₂, ρ₃] when the stages differ
        "batch_capacity": cascade.batch_capacity,
        "backend": cascade.backend,
        # The --precision asked for (None: the backend's default); "machine" says what it became.
        "precision": precision,
        "quantization": cascade.manifest.get("quantization", {}).get("precision"),
        "machine": cascade.runner.machine(),
    }
