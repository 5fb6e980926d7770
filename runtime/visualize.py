"""Pictures of a cascade result: palette label maps, overlays and a stage view like the paper's Fig. 4.

numpy + Pillow only. Images are (H, W, 3) uint8 RGB arrays, label maps (H, W) class ids
with 255 = void, and the stage map holds 1, 2 or 3 (the stage that decided each pixel) at
any resolution: it is scaled to the image with nearest-neighbour sampling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VOID = 255
VOID_COLOUR = (255, 255, 255)
# Stage colours (Okabe-Ito, distinguishable with the common colour-vision deficiencies):
# stage 1 (easy pixels) is a neutral grey so the eye goes to the pixels that needed more work.
STAGE_COLOURS = ((120, 120, 120), (230, 159, 0), (204, 60, 160))
_LEGEND_BACKGROUND = (28, 28, 30)
_LEGEND_TEXT = (235, 235, 235)
_TILE_PIXELS = 1 << 20
# A confidence picture's scale: 16-bit grey levels, 65535 = probability 1 (docs/run.md).
CONFIDENCE_LEVELS = 65535


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return image


def _check_labels(labels: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or (shape is not None and labels.shape != shape):
        raise ValueError(f"expected an (H, W) label map{'' if shape is None else f' of {shape}'}, got {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > VOID):
            raise ValueError("label values must be 0..255")
        labels = labels.astype(np.uint8)
    return labels


def _colour_table(palette: np.ndarray) -> np.ndarray:
    """(256, 3) uint8: the class colours, white for void (255), black for unused ids."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) > VOID:
        raise ValueError(f"a palette has at most {VOID} class colours, got {len(palette)}")
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    table[VOID] = VOID_COLOUR
    return table


def label_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """The label map as a mode "P" image: pixel values are the class ids, colours from ``palette``.

    Saved as PNG this is the VOC convention: tools read the ids back, viewers show colours.
    """
    picture = Image.fromarray(np.ascontiguousarray(_check_labels(labels)))
    picture.putpalette(_colour_table(palette).tobytes())  # turns the "L" image into "P"
    return picture


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The class colours blended over ``image`` with weight ``alpha`` (RGB); void pixels show the image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = _check_image(image)
    labels = _check_labels(labels, image.shape[:2])
    # Pillow's palette lookup and blend run in C, without float copies of the picture: a video's overlay is drawn
    # for every frame, and blending in float numpy had made it the slowest part of a 1280x720 video's pipeline.
    # Its blend truncates where rint rounds: a level at most.
    picture = Image.fromarray(np.ascontiguousarray(image))
    blended = Image.blend(picture, label_image(labels, palette).convert("RGB"), alpha)
    void = labels == VOID
    if void.any():
        blended.paste(picture, mask=Image.fromarray(void.view(np.uint8) * np.uint8(255)))
    return blended


def stage_picture(image: np.ndarray, stage_map: np.ndarray) -> Image.Image:
    """Which stage decided each pixel, drawn over the image, with a legend strip below it.

    The picture is the image's width and its height plus the legend's. Stage-1 pixels
    show the image in dim grey, stage-2 and stage-3 pixels tint it with their colour
    (the image's shading stays visible, so one sees *what* each stage worked on). The
    legend gives each stage's colour and share of the stage map's pixels.
    """
    image = _check_image(image)
    stage_map = _check_labels(stage_map)
    if stage_map.size and not np.isin(stage_map, (1, 2, 3)).all():
        raise ValueError(f"stage map values must be 1, 2 or 3, got {np.unique(stage_map).tolist()}")
    height, width = image.shape[:2]
    upsampled = Image.fromarray(np.ascontiguousarray(stage_map)).resize((width, height), Image.Resampling.NEAREST)
    stages = np.asarray(upsampled)
    legend = _legend(width, [float(np.mean(stage_map == k)) for k in (1, 2, 3)])
    canvas = np.empty((height + legend.height, width, 3), np.uint8)
    colours = np.array(STAGE_COLOURS, np.float32)
    luma_weights = np.array([0.299, 0.587, 0.114], np.float32)
    for rows in _row_tiles(height, width):
        # Rec. 601 luma, lifted so dark image regions still show their stage colour.
        luma = image[rows].astype(np.float32) @ luma_weights / 255.0
        shade = (0.35 + 0.65 * luma)[:, :, None]
        canvas[rows] = np.rint(colours[stages[rows] - 1] * shade).astype(np.uint8)
    canvas[height:] = np.asarray(legend)
    return Image.fromarray(canvas)


def confidence_image(confidence: np.ndarray) -> Image.Image:
    """A 16-bit grayscale picture of a confidence map (values in [0, 1]): pixel = round(p · 65535)."""
    levels = np.round(np.clip(np.asarray(confidence, np.float32), 0, 1) * CONFIDENCE_LEVELS).astype(np.uint16)
    return Image.fromarray(levels)


def _row_tiles(height: int, width: int) -> list[slice]:
    """Row bands of about a megapixel: the float temporaries of a picture stay small on huge images."""
    rows = max(1, _TILE_PIXELS // max(width, 1))
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def _percent(share: float) -> str:
    if 0.0 < share < 0.005:
        return "<1%"
    return f"{100.0 * share:.0f}%"


def _legend(width: int, shares: list[float]) -> Image.Image:
    """A dark strip ``width`` wide with a colour swatch and "stage k: N%" per stage.

    The entries go in one row when they fit, else one per row, shortened to "k: N%" on
    very narrow images.
    """
    font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox("stage 3: 100%")
    swatch = bottom - top
    gap, pad, spacing = 4, 4, 12
    row_height = swatch + 2 * pad
    layouts = [("stage {k}: {p}", True), ("stage {k}: {p}", False), ("{k}: {p}", False)]
    for template, one_row in layouts:
        texts = [template.format(k=k, p=_percent(share)) for k, share in enumerate(shares, start=1)]
        entry_widths = [swatch + gap + round(font.getlength(text)) for text in texts]
        needed = sum(entry_widths) + 2 * spacing if one_row else max(entry_widths)
        if 2 * pad + needed <= width:
            break  # otherwise the last layout is drawn and clipped: the image is tiny
    strip = Image.new("RGB", (width, row_height * (1 if one_row else 3)), _LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x, y = pad, pad
    for colour, text, entry_width in zip(STAGE_COLOURS, texts, entry_widths, strict=True):
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=colour)
        draw.text((x + swatch + gap, y - top), text, fill=_LEGEND_TEXT, font=font)
        if one_row:
            x += entry_width + spacing
        else:
            y += row_height
    return strip
