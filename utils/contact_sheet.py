"""Contact sheets: a few frames of each of several clips in a row, the clip's caption under it, as one PNG."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.atomic import atomic_write

CAPTION_HEIGHT = 14  # pixels under each clip for one line of the default bitmap font
GAP = 4  # pixels between clips


def contact_sheet(clips: list[np.ndarray], captions: list[str], frames: int = 4, scale: int = 2,
                  columns: int = 2) -> Image.Image:
    """clips: uint8 (T, H, W, 3) each, all the same size; shows `frames` of each (evenly spread over T) enlarged
    `scale` times (nearest neighbour, so pixels stay visible), captions cut to fit their clip's width."""
    if not clips:
        raise ValueError("a contact sheet needs at least one clip")
    T, H, W, _ = clips[0].shape
    picks = np.round(np.linspace(0, T - 1, min(frames, T))).astype(int)
    tile_w, tile_h = len(picks) * W * scale, H * scale + CAPTION_HEIGHT
    rows = -(-len(clips) // columns)
    sheet = Image.new("RGB", (columns * tile_w + (columns - 1) * GAP, rows * tile_h + (rows - 1) * GAP), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for k, (clip, caption) in enumerate(zip(clips, captions)):
        x, y = (k % columns) * (tile_w + GAP), (k // columns) * (tile_h + GAP)
        strip = np.concatenate([clip[i] for i in picks], axis=1)  # (H, frames*W, 3)
        strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
        sheet.paste(Image.fromarray(strip), (x, y))
        text = caption
        if draw.textlength(text, font=font) > tile_w - 2:
            while text and draw.textlength(text + "...", font=font) > tile_w - 2:
                text = text[:-1]
            text += "..."
        draw.text((x + 1, y + H * scale + 1), text, fill="black", font=font)
    return sheet


def write_png(path: str, image: Image.Image) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")
