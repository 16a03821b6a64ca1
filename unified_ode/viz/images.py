"""Image outputs: ``[-1, 1]`` tensors to uint8 arrays, and grids / strips written as PNG.

``to_uint8_nhwc`` is the one place where generated images are quantised: ``round((x + 1)·127.5)``
clipped to ``[0, 255]``, laid out ``(N, H, W, C)`` — the layout FID tools read from ``.npz``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` float in ``[-1, 1]`` -> ``(N, H, W, C)`` uint8 (non-finite values -> 0)."""
    x = torch.nan_to_num(x.detach().float().cpu(), nan=-1.0, posinf=1.0, neginf=-1.0)
    x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def grid_array(images: np.ndarray, nrow: int | None = None, pad: int = 1,
               scale: int | None = None) -> np.ndarray:
    """Tile ``(N, H, W, C)`` uint8 images into one ``(rows·(H+pad)+pad, ...)`` uint8 image.

    ``nrow``: images per row (default ``ceil(sqrt(N))``). ``scale``: integer nearest-neighbour
    magnification (default: enough to make each tile at least 48 pixels high).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"grid_array needs uint8 (N, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    n, h, w, c = images.shape
    if scale is None:
        scale = max(1, math.ceil(48 / h))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        out[top:top + h, left:left + w] = images[i]
    return out


def save_png(path, array: np.ndarray) -> Path:
    """Write an ``(H, W, C)`` uint8 array (C = 1 or 3) as PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = array[:, :, 0] if array.shape[2] == 1 else array
    Image.fromarray(arr).save(path)
    return path


def save_image_grid(path, images, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write a grid PNG of ``images``: a ``(N, C, H, W)`` tensor in ``[-1, 1]`` or an
    ``(N, H, W, C)`` uint8 array."""
    arr = to_uint8_nhwc(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    return save_png(path, grid_array(arr, nrow=nrow, scale=scale))


def panels_array(panels, nrow: int | None = None, gap: int = 24, scale: int | None = None,
                 title_height: int = 28) -> np.ndarray:
    """Image grids side by side, each under its title -> one ``(H, W, 3)`` uint8 image.

    ``panels``: ``[(title, images), ...]`` with ``images`` ``(N, H, W, C)`` uint8 (or
    ``(N, C, H, W)`` tensors in ``[-1, 1]``). Every grid comes from :func:`grid_array` with one
    integer scale for both axes, so square images stay square tiles (no resampling).
    Titles may hold several lines (``\\n``).
    """
    from PIL import Image, ImageDraw

    grids = []
    for title, images in panels:
        arr = to_uint8_nhwc(images) if isinstance(images, torch.Tensor) else np.asarray(images)
        grid = grid_array(arr, nrow=nrow, scale=scale)
        grids.append((str(title), np.repeat(grid, 3, axis=2) if grid.shape[2] == 1 else grid))
    lines = max(t.count("\n") + 1 for t, _ in grids)
    top = title_height * lines
    height = top + max(g.shape[0] for _, g in grids)
    width = sum(g.shape[1] for _, g in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for title, grid in grids:
        canvas.paste(Image.fromarray(grid), (left, top))
        for k, line in enumerate(title.split("\n")):
            w = draw.textlength(line)
            draw.text((left + (grid.shape[1] - w) / 2, k * title_height + title_height / 3),
                      line, fill=(0, 0, 0))
        left += grid.shape[1] + gap
    return np.asarray(canvas)
