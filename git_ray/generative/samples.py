"""A PNG grid of generator samples: does content survive while style varies?

Rows are source training images, one per class where possible (up to `max_rows` classes);
column 0 is the source, columns 1..k the same content decoded with k random styles. Each
column shares one style code across rows, so a good generator shows every digit kept and the
nuisance (background, stroke, ...) changing from column to column.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from git_ray.generative.networks import Munit


def one_per_class(labels: Tensor, generator: torch.Generator, max_rows: int) -> Tensor:
    """Index of one randomly chosen image for each class present (class order), at most max_rows."""
    labels = labels.cpu()
    picks = []
    for c in torch.unique(labels)[:max_rows]:
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randint(len(members), (1,), generator=generator)])
    return torch.cat(picks)


@torch.no_grad()
def sample_grid(munit: Munit, data: Any, *, k: int = 6, seed: int = 0, max_rows: int = 50,
                device: torch.device | str = "cpu") -> Tensor:
    """(rows, 1 + k, C, H, W) images in [0, 1]: each source then its k restyled versions."""
    g = torch.Generator().manual_seed(seed)
    idx = one_per_class(data.y_train, g, max_rows)
    x = data.x_train[idx].to(device) * 2 - 1  # (R, C, H, W) in [-1, 1]
    z = torch.randn(k, munit.style_dim, generator=g).to(device)  # (k, S), shared down each column
    was_training = munit.training
    munit.eval()
    content = munit.content_encoder(x)  # (R, D, h, w)
    cols = [x]
    for j in range(k):
        cols.append(munit.decode(content, z[j].expand(len(x), -1)))
    munit.train(was_training)
    grid = torch.stack(cols, dim=1)  # (R, 1 + k, C, H, W)
    return ((grid + 1) / 2).clamp(0, 1).cpu()


def grid_to_png(grid: Tensor, min_cell: int = 48, gap: int = 2) -> bytes:
    """Tile (R, K, C, H, W) in [0, 1] into one PNG, cells upscaled (nearest) to >= min_cell px."""
    r, k, c, h, w = grid.shape
    scale = max(1, -(-min_cell // h))
    cells = grid.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)  # upscale
    hs, ws = h * scale, w * scale
    canvas = torch.ones(c, r * (hs + gap) - gap, k * (ws + gap) - gap)  # white gaps
    for i in range(r):
        for j in range(k):
            canvas[:, i * (hs + gap):i * (hs + gap) + hs, j * (ws + gap):j * (ws + gap) + ws] = cells[i, j]
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)  # uint8 2-D -> L, (H, W, 3) -> RGB
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sample_grid_png(munit: Munit, data: Any, *, k: int = 6, seed: int = 0, max_rows: int = 50,
                    device: torch.device | str = "cpu") -> bytes:
    return grid_to_png(sample_grid(munit, data, k=k, seed=seed, max_rows=max_rows, device=device))
