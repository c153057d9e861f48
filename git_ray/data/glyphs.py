"""The offline `glyphs` source: a K49-shaped data set rendered from the fonts matplotlib ships.

    SOURCES.build("glyphs", root=None, image_size=None) -> SourcePools   # 49 classes, 28x28 uint8

Kuzushiji-49 cannot be downloaded at run time, so this source stands in for it with the same
shape: 49 classes, 28x28 grey images whose strokes are bright on a background of exactly 0 (so
the background nuisance, which fills pixels == 0, and dilation act as on K49), 6,000 training
and 700 test images a class (K49-LT's largest class, 4,800, is 80% of 6,000).

Every image is its own rendering: a font face (DejaVu Sans / Serif / Mono and STIX in their
regular, bold and slanted faces; Computer Modern for letters and digits), a stroke width, and a
random affine (size, aspect, slant, a few degrees of rotation, position). How it is made, fast:
1. one master per (face, glyph) is drawn once with PIL at master_size (112) px, fitted to a box;
2. each master gets one variant per stroke kernel (grey erosion / dilation at that resolution),
   and all are area-downsampled to master_warp (28) px: about 3,700 masters;
3. every image picks one of its class's masters and affine parameters from a torch.Generator
   seeded by POOL_SEED and is warped from it by a batched grid_sample, then quantised to uint8
   with faint values set to 0 and a zero border, so the background is exactly 0.

The pool is fixed (like K49's files), so the data a trial sees depends only on the dataset config
(`split_seed`, `instance`, ...). It is cached on disk, keyed by the generation parameters, the
pool sizes and the font files' sha256, as one .npz under

    <cache>/glyphs/glyphs-<key>.npz, <cache> = dataset.root if set, else $GIT_RAY_CACHE_DIR,
    else $XDG_CACHE_HOME/git_ray, else ~/.cache/git_ray

written atomically (temporary file in the same folder, then os.replace) under a file lock, so
trials that start together build it once. An entry that does not load (the .npz's CRC-32 of each
array is checked as it is read), or whose shapes or dtypes are wrong, is rebuilt with a logged
warning. Timings: bench/bench_glyphs.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from git_ray.data.sources import SourcePools, config_error
from git_ray.registry import SOURCES

log = logging.getLogger(__name__)

# 49 glyphs chosen to differ in shape. Left out: case twins and look-alikes (o/O/0, l/1/I/i/|,
# S/s, C/c, x/X, v/V, w/W, z/Z, u/U, k/K, y/Y, p/P, j/J, t/+), and shapes that another glyph
# becomes when the rotation nuisance turns it (6/9, b/d/p/q, n/u, M/W, N/Z, Y/lambda, and one of
# each pair ( ) [ ] { } < >). What remains: 7 digits, 15 upper- and 7 lower-case Latin letters,
# Omega, lambda, pi, theta and 16 symbols.
GLYPHS = ("2", "3", "4", "5", "6", "7", "8",
          "A", "B", "D", "E", "F", "G", "H", "J", "K", "M", "N", "P", "Q", "R", "T",
          "a", "e", "f", "g", "h", "n", "r",
          "\u03a9", "\u03bb", "\u03c0", "\u03b8",  # Omega, lambda, pi, theta
          "#", "$", "%", "&", "?", "@", "+", "=", "*", "/", "<", "{",
          "\u00a3", "\u20ac", "\u00a7", "\u00b6")  # pound, euro, section, pilcrow
NUM_CLASSES = len(GLYPHS)

# Faces with every glyph above (checked with FT2Font.get_char_index and by eye).
FULL_FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
              "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
              "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
              "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")
# Computer Modern text faces: matplotlib's copies map ASCII letters and digits to the right shapes
# but put other glyphs (symbols, Greek) at TeX's own code points, so they are used for letters and
# digits only. cmmi / cmsy / cmex are math fonts and left out.
ALNUM_FACES = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf")

POOL_SEED = 20220317  # the pool's own generation seed: the pool is a fixed data set, like K49's files
TRAIN_PER_CLASS = 6000  # 80% (after the validation split) is K49-LT's largest class, 4,800
TEST_PER_CLASS = 700
CACHE_VERSION = 1  # bump when the rendering changes in a way the parameters below do not capture
SPLITS = ("train", "test")  # in the order of their seeds (POOL_SEED * 10 + position)
CHUNK = 4096  # images per batched warp; part of the recipe (the draw order follows it)
ENV_CACHE_DIR = "GIT_RAY_CACHE_DIR"


@dataclass(frozen=True)
class RenderParams:
    """What the images look like; every field is part of the cache key."""

    image_size: int = 28
    master_size: int = 112  # px a side of each master drawing (4x the output)
    fit: float = 0.75  # a master's glyph fills this fraction of the frame (its longer side)
    master_warp: int = 28  # masters are area-downsampled to this size, the warp reads them there
    supersample: int = 1  # the warp writes image_size * supersample, area-downsampled to image_size
    stroke_kernels: tuple[int, ...] = (-3, 1, 3, 7)  # at master_size: < 0 erode, 1 as drawn, > 1 dilate
    scale: tuple[float, float] = (0.8, 1.08)  # size, relative to the master's fit
    log_aspect: float = 0.12  # width / height = exp(U(-a, a))
    slant: float = 0.28  # x shear by y, U(-s, s)
    rotation_deg: float = 8.0  # U(-r, r) degrees
    shift: float = 0.09  # translation, U(-t, t) of the half frame
    zero_below: int = 24  # uint8 values below this become 0 (the antialiasing halo: background exactly 0)


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _faces() -> list[tuple[str, bool]]:
    """(file name, renders every glyph) for each face used."""
    return [(f, True) for f in FULL_FACES] + [(f, False) for f in ALNUM_FACES]


@lru_cache(maxsize=1)
def font_hashes() -> dict[str, str]:
    """sha256 of every font file used (part of the cache key: other fonts, other images)."""
    out = {}
    for name, _ in _faces():
        path = _font_dir() / name
        if not path.is_file():
            raise config_error(f"source 'glyphs' needs matplotlib's font {str(path)!r}, which is "
                               "missing; reinstall matplotlib (pip install --force-reinstall matplotlib)")
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cache_key(params: RenderParams, train_per_class: int, test_per_class: int) -> str:
    """A hex key of everything the pool depends on: parameters, sizes, glyphs, fonts, renderer."""
    from PIL import __version__ as pil_version
    from PIL import features

    spec = {"version": CACHE_VERSION, "params": asdict(params), "train": train_per_class,
            "test": test_per_class, "seed": POOL_SEED, "chunk": CHUNK, "glyphs": "".join(GLYPHS),
            "fonts": font_hashes(), "pil": pil_version, "freetype": features.version("freetype2")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def cache_dir(root: str | None) -> Path:
    """The cache folder: dataset.root, else $GIT_RAY_CACHE_DIR, else the user cache folder."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "git_ray"


# ---------------------------------------------------------------------------------------------
# rendering


@lru_cache(maxsize=None)
def _font(path: str, size: int):  # -> PIL.ImageFont.FreeTypeFont; loading a face costs a few ms
    from PIL import ImageFont

    return ImageFont.truetype(path, size=size)


def _draw(font_path: Path, glyph: str, params: RenderParams) -> np.ndarray:
    """One glyph drawn with PIL at master_size px, its ink box resized so the longer side fills
    `fit` of a master_size frame, centred. float32 (S, S) in [0, 1]."""
    from PIL import Image, ImageDraw

    S = params.master_size
    font = _font(str(font_path), S)
    left, top, right, bottom = font.getbbox(glyph)
    pad = 4
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), glyph, font=font, fill=255)
    ink = canvas.getbbox()
    if ink is None:
        raise RuntimeError(f"font {font_path.name} draws nothing for {glyph!r}")
    crop = canvas.crop(ink)
    w, h = crop.size
    scale = params.fit * S / max(w, h)
    w, h = max(1, min(S, round(w * scale))), max(1, min(S, round(h * scale)))
    crop = crop.resize((w, h), Image.BICUBIC)  # the masters are area-downsampled 4x afterwards
    out = np.zeros((S, S), dtype=np.float32)
    y0, x0 = (S - h) // 2, (S - w) // 2
    out[y0:y0 + h, x0:x0 + w] = np.asarray(crop, dtype=np.float32) / 255.0
    return out


def _stroke(x: Tensor, k: int) -> Tensor:
    """Grey dilation (k > 1) or erosion (k < -1) with a |k| x |k| square, odd |k|, size kept; the
    border never wins. A square is separable (a column pass, then a row pass), and each pass is
    |k| - 1 elementwise maxima of shifted views: on the masters, 2x (k = 3) to 6x (k = 7) faster
    on a CPU than max_pool2d with stride 1 (measured on the 2-core development machine)."""
    if abs(k) <= 1:
        return x
    sign, k = (1.0, k) if k > 0 else (-1.0, -k)
    r = k // 2
    y = F.pad(sign * x, (r, r, r, r), value=-math.inf)  # (B, C, H + 2r, W + 2r)
    H, W = x.shape[-2:]
    rows = y[..., 0:H, :].clone()  # (B, C, H, W + 2r)
    for d in range(1, k):
        torch.maximum(rows, y[..., d:d + H, :], out=rows)
    out = rows[..., 0:W].clone()  # (B, C, H, W)
    for d in range(1, k):
        torch.maximum(out, rows[..., d:d + W], out=out)
    return sign * out


@lru_cache(maxsize=2)  # a process that renders twice (the tests; a rebuilt entry) draws once
def render_masters(params: RenderParams) -> tuple[Tensor, list[list[int]]]:
    """Every (face, glyph, stroke) master, area-downsampled to master_warp.

    Returns masters (M, 1, W, W) float32 (read only: they are shared) and, per class, the
    indices of its masters."""
    font_dir = _font_dir()
    drawings, owners = [], []  # (S, S) arrays; class of each
    for name, full in _faces():
        for c, glyph in enumerate(GLYPHS):
            if full or glyph.isascii() and glyph.isalnum():
                drawings.append(_draw(font_dir / name, glyph, params))
                owners.append(c)
    base = torch.from_numpy(np.stack(drawings)).unsqueeze(1)  # (D, 1, S, S)
    factor = params.master_size // params.master_warp
    variants = [F.avg_pool2d(_stroke(base, k), factor) for k in params.stroke_kernels]  # each (D, 1, W, W)
    masters = torch.cat(variants)  # (D * K, 1, W, W), variant-major
    per_class: list[list[int]] = [[] for _ in GLYPHS]
    for v in range(len(params.stroke_kernels)):
        for d, c in enumerate(owners):
            per_class[c].append(v * len(drawings) + d)
    return masters.contiguous(), per_class


def draw_affines(n: int, params: RenderParams, gen: torch.Generator) -> Tensor:
    """(n, 2, 3) matrices mapping output coordinates to master coordinates ([-1, 1] both)."""
    u = torch.rand(n, 6, generator=gen)  # (n, 6) uniforms: scale, aspect, slant, angle, dx, dy
    lo, hi = params.scale
    s = lo + (hi - lo) * u[:, 0]
    a = torch.exp((2 * u[:, 1] - 1) * params.log_aspect)
    sx, sy = s * a, s / a
    k = (2 * u[:, 2] - 1) * params.slant
    ang = (2 * u[:, 3] - 1) * math.radians(params.rotation_deg)
    t = (2 * u[:, 4:6] - 1) * params.shift  # (n, 2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # Forward map A = R(angle) @ [[1, -k], [0, 1]] @ diag(sx, sy), then the shift. y points down,
    # so the shear -k moves the top right for k > 0, like an italic. The warp needs the inverse.
    a11, a12 = cos * sx, (-cos * k - sin) * sy
    a21, a22 = sin * sx, (-sin * k + cos) * sy
    A = torch.stack([torch.stack([a11, a12], 1), torch.stack([a21, a22], 1)], 1)  # (n, 2, 2)
    inv = torch.linalg.inv(A)
    return torch.cat([inv, -(inv @ t.unsqueeze(2))], 2)  # (n, 2, 3)


def _grid(theta: Tensor, size: int) -> Tensor:
    """F.affine_grid(theta, (n, 1, size, size), align_corners=False) for a square output, built
    by one broadcast add of a per-column and a per-row term: the same numbers, 5x faster on a
    CPU (affine_grid multiplies a homogeneous (size * size, 3) grid by every matrix)."""
    c = (torch.arange(size, dtype=theta.dtype) * 2 + 1) / size - 1  # (S,) pixel centres in [-1, 1]
    along = theta[:, :, 0:1] * c  # (n, 2, S): (x', y') from the column coordinate
    down = theta[:, :, 1:2] * c + theta[:, :, 2:3]  # (n, 2, S): from the row coordinate, + shift
    grid = torch.empty(theta.shape[0], size, size, 2, dtype=theta.dtype)  # (n, S rows, S cols, 2)
    torch.add(along.transpose(1, 2).unsqueeze(1), down.transpose(1, 2).unsqueeze(2), out=grid)
    return grid


def render_recipe(per_class: list[list[int]], n_per_class: int, params: RenderParams,
                  gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """What every image of a split is warped from, class-major: the index of its master (N,)
    into `render_masters`'s masters and its affine (N, 2, 3), drawn from `gen` chunk by chunk
    (a master for each image of the chunk, then their affines: the draw order is part of the
    recipe, so the pool is). `bench/stroke_confound.py` warps the same affines from other masters."""
    C = len(per_class)
    options = torch.tensor([len(p) for p in per_class], dtype=torch.float64)
    table = torch.full((C, int(options.max())), -1, dtype=torch.long)
    for c, p in enumerate(per_class):
        table[c, :len(p)] = torch.tensor(p)
    labels = torch.arange(C).repeat_interleave(n_per_class)  # (N,)
    index, theta = [], []
    for start in range(0, len(labels), CHUNK):
        y = labels[start:start + CHUNK]  # (n,)
        pick = (torch.rand(len(y), generator=gen, dtype=torch.float64) * options[y]).long()  # (n,)
        index.append(table[y, pick])
        theta.append(draw_affines(len(y), params, gen))  # (n, 2, 3)
    return torch.cat(index), torch.cat(theta)


def warp(masters: Tensor, index: Tensor, theta: Tensor, params: RenderParams) -> Tensor:
    """uint8 (n, S, S): masters[index] (n,) warped by theta (n, 2, 3), area-downsampled, faint
    values set to 0 and the border cleared, as every pool image is made."""
    W = params.image_size * params.supersample
    img = F.grid_sample(masters[index], _grid(theta, W), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (n, 1, W, W)
    if params.supersample > 1:
        img = F.avg_pool2d(img, params.supersample)  # (n, 1, S, S): area downsampling
    img = img.squeeze(1).mul_(255.0).round_()  # (n, S, S); the warp never leaves [0, 1]
    img.masked_fill_(img < params.zero_below, 0.0)  # the faint halo: background exactly 0
    img[:, 0, :] = img[:, -1, :] = img[:, :, 0] = img[:, :, -1] = 0.0  # border always background
    return img.clamp_(0.0, 255.0).to(torch.uint8)


def split_generator(split: str) -> torch.Generator:
    """The random stream a split of the pool is drawn from (independent per split)."""
    return torch.Generator().manual_seed(POOL_SEED * 10 + SPLITS.index(split))


def _render_split(masters: Tensor, per_class: list[list[int]], n_per_class: int, params: RenderParams,
                  gen: torch.Generator) -> np.ndarray:
    """n_per_class images of every class, class-major. uint8 (C * n, S, S)."""
    index, theta = render_recipe(per_class, n_per_class, params, gen)
    S = params.image_size
    out = torch.empty((len(index), S, S), dtype=torch.uint8)
    for start in range(0, len(index), CHUNK):
        out[start:start + CHUNK] = warp(masters, index[start:start + CHUNK], theta[start:start + CHUNK], params)
    return out.numpy()


def render_pool(train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
                params: RenderParams = RenderParams()) -> dict[str, np.ndarray]:
    """Render the pool (no cache). Arrays x_train (C*n, S, S) uint8, y_train (C*n,) uint8, x_test, y_test."""
    if params.master_size % params.master_warp:
        raise ValueError("master_size must be a multiple of master_warp")
    masters, per_class = render_masters(params)
    out = {}
    for split, n in zip(SPLITS, (train_per_class, test_per_class)):
        out[f"x_{split}"] = _render_split(masters, per_class, n, params, split_generator(split))
        out[f"y_{split}"] = np.repeat(np.arange(NUM_CLASSES, dtype=np.uint8), n)
    return out


# ---------------------------------------------------------------------------------------------
# cache


def _read_entry(path: Path, train_per_class: int, test_per_class: int,
                params: RenderParams) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None (with a warning) when it is unreadable or wrong."""
    S = params.image_size
    expect = {"x_train": ((NUM_CLASSES * train_per_class, S, S), np.uint8),
              "y_train": ((NUM_CLASSES * train_per_class,), np.uint8),
              "x_test": ((NUM_CLASSES * test_per_class, S, S), np.uint8),
              "y_test": ((NUM_CLASSES * test_per_class,), np.uint8)}
    try:
        with np.load(path, allow_pickle=False) as npz:
            # zipfile checks each member's CRC-32 as it is read: a flipped or missing byte raises.
            arrays = {name: npz[name] for name in expect}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("glyphs: cache entry %s is unreadable (%s: %s); rebuilding it", path,
                    type(err).__name__, err)
        return None
    for name, (shape, dtype) in expect.items():
        if arrays[name].shape != shape or arrays[name].dtype != dtype:
            log.warning("glyphs: cache entry %s has %s %s %s, expected %s %s; rebuilding it", path, name,
                        arrays[name].dtype, arrays[name].shape, np.dtype(dtype), shape)
            return None
    return arrays


def _write_entry(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loads in a fraction of a second
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache folder is read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_pool(root: str | None = None, train_per_class: int = TRAIN_PER_CLASS,
              test_per_class: int = TEST_PER_CLASS, params: RenderParams = RenderParams()) -> dict[str, np.ndarray]:
    """The pool from the cache, rendering and caching it first if it is missing or broken."""
    from filelock import FileLock

    folder = cache_dir(root) / "glyphs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = ("dataset.root" if root else f"${ENV_CACHE_DIR}" if os.environ.get(ENV_CACHE_DIR)
                 else "the user cache folder")
        raise config_error(f"source 'glyphs' caches its images in {where} ({str(folder)!r}), which "
                           f"cannot be created ({err}); set dataset.root or ${ENV_CACHE_DIR} to a "
                           "writable folder") from None
    path = folder / f"glyphs-{cache_key(params, train_per_class, test_per_class)}.npz"
    if path.is_file():
        arrays = _read_entry(path, train_per_class, test_per_class, params)
        if arrays is not None:
            return arrays
    # Trials that start together build it once: the others wait on the lock, then read the file.
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            arrays = _read_entry(path, train_per_class, test_per_class, params)
            if arrays is not None:
                return arrays
        log.info("glyphs: rendering %d x (%d + %d) images into %s", NUM_CLASSES, train_per_class,
                 test_per_class, path)
        arrays = render_pool(train_per_class, test_per_class, params)
        _write_entry(path, arrays)
    return arrays


@SOURCES.register("glyphs")
def load_glyphs(*, root: str | None = None, image_size: int | None = None) -> SourcePools:
    """49 classes of font glyphs, 28x28 grey, 6,000 train / 700 test a class, rendered offline.

    `root`, when set, is the cache folder (no files are read from it otherwise)."""
    arrays = load_pool(root, TRAIN_PER_CLASS, TEST_PER_CLASS)
    x = {s: torch.from_numpy(arrays[f"x_{s}"]).unsqueeze(1) for s in ("train", "test")}  # (N, 1, 28, 28)
    y = {s: torch.from_numpy(arrays[f"y_{s}"].astype(np.int64)) for s in ("train", "test")}
    return SourcePools("glyphs", x["train"], y["train"], x["test"], y["test"], num_classes=NUM_CLASSES,
                       image_size=image_size or RenderParams().image_size, default_max_per_class=4800)
