"""MUNIT networks: content and style encoders, AdaIN decoder with its style MLP, discriminator.

The generative model of GIT (METHOD.md, "GIT: the generative model"). An image is split into a
spatial content code (class identity) and a small style vector (the nuisance); decoding a content
code with a fresh style draws a new nuisance for the same image. Sizes round-trip for any image
size >= 8: the content encoder reflect-pads its input to a multiple of 2**n_downsample and the
decoder crops the centre back, so 28 px with n_downsample=2 gives a 7x7 content code and 28 px
images again. The discriminator uses as many stride-2 layers (at most 4) as the image size allows.

Both of MUNIT's domains are the same pooled training set here, so one generator and one
discriminator serve both (the original keeps a pair per domain; with identical domains the pair
would learn the same function at twice the cost).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Building blocks


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "in":  # instance norm without affine: MUNIT's content path keeps no per-channel scale
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "ln":  # per-sample norm over (C, H, W) with a per-channel affine = GroupNorm(1, C)
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of: in, ln, none")


class ConvBlock(nn.Sequential):
    """Reflect pad -> conv -> norm -> activation (the unit every MUNIT network is made of)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, pad: int = 0,
                 norm: str = "none", act: str = "relu"):
        acts = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(0.2), "tanh": nn.Tanh(), "none": nn.Identity()}
        super().__init__(nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, kernel, stride),
                         _norm(norm, cout), acts[act])


class ResBlock(nn.Module):
    """Two 3x3 conv blocks with an identity shortcut; instance norm (content encoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(ConvBlock(channels, channels, 3, pad=1, norm="in"),
                                  ConvBlock(channels, channels, 3, pad=1, norm="in", act="none"))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + self.body(x)


def adain(x: Tensor, scale: Tensor, shift: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance norm: normalise each (sample, channel) map, then apply a per-sample affine.

    x (B, C, H, W); scale, shift (B, C). The scale enters as 1 + scale, so an MLP output of zero
    means plain instance norm rather than a map scaled to zero.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)  # (B, C, 1, 1)
    xn = (x - mean) * torch.rsqrt(var + eps)
    return xn * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class AdaResBlock(nn.Module):
    """Residual block whose two norms are AdaIN driven by the style code (decoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 3)
        self.channels = channels

    @property
    def num_params(self) -> int:  # scale and shift for each of the two norms
        return 4 * self.channels

    def forward(self, x: Tensor, params: Tensor) -> Tensor:
        # x (B, C, H, W), params (B, 4C) = [scale1, shift1, scale2, shift2]
        s1, b1, s2, b2 = params.chunk(4, dim=1)  # each (B, C)
        h = F.relu(adain(self.conv1(self.pad(x)), s1, b1))
        h = adain(self.conv2(self.pad(h)), s2, b2)
        return x + h


# ---------------------------------------------------------------------------------------------
# Encoders, decoder, MLP


class ContentEncoder(nn.Module):
    """7x7 conv, n_downsample 4x4 stride-2 convs doubling channels, n_res residual blocks (IN)."""

    def __init__(self, in_channels: int, dim: int, n_downsample: int, n_res: int):
        super().__init__()
        self.multiple = 2 ** n_downsample
        layers: list[nn.Module] = [ConvBlock(in_channels, dim, 7, pad=3, norm="in")]
        for _ in range(n_downsample):
            layers.append(ConvBlock(dim, 2 * dim, 4, stride=2, pad=1, norm="in"))
            dim *= 2
        layers += [ResBlock(dim) for _ in range(n_res)]
        self.net = nn.Sequential(*layers)
        self.out_channels = dim

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, D, H', W'), H' = ceil(H / 2**n)
        return self.net(pad_to_multiple(x, self.multiple))


class StyleEncoder(nn.Module):
    """7x7 conv, stride-2 4x4 convs (doubling twice, then constant), global average pool, 1x1 conv.

    No normalisation: instance norm would erase exactly the global statistics (background level,
    contrast) that make up the style.
    """

    def __init__(self, in_channels: int, dim: int, style_dim: int, n_down: int):
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(in_channels, dim, 7, pad=3)]
        for i in range(n_down):
            out = 2 * dim if i < 2 else dim
            layers.append(ConvBlock(dim, out, 4, stride=2, pad=1))
            dim = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, style_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, style_dim)
        return self.net(x).flatten(1)


class StyleMLP(nn.Module):
    """3 linear layers (ReLU between) from a style code to every AdaIN scale and shift."""

    def __init__(self, style_dim: int, out_dim: int, hidden: int, n_layers: int = 3):
        super().__init__()
        dims = [style_dim] + [hidden] * (n_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, s: Tensor) -> Tensor:  # (B, style_dim) -> (B, out_dim)
        return self.net(s)


class Decoder(nn.Module):
    """n_res AdaIN residual blocks, n_upsample x (nearest x2, 5x5 conv, layer norm, ReLU), 7x7 conv, tanh."""

    def __init__(self, in_dim: int, out_channels: int, n_upsample: int, n_res: int,
                 style_dim: int, mlp_dim: int, out_size: int):
        super().__init__()
        self.res = nn.ModuleList(AdaResBlock(in_dim) for _ in range(n_res))
        ups: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_upsample):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), ConvBlock(dim, dim // 2, 5, pad=2, norm="ln")]
            dim //= 2
        ups.append(ConvBlock(dim, out_channels, 7, pad=3, act="tanh"))
        self.up = nn.Sequential(*ups)
        self.mlp = StyleMLP(style_dim, sum(b.num_params for b in self.res), mlp_dim)
        self.out_size = out_size

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        # content (B, D, h, w), style (B, style_dim) -> (B, C, out_size, out_size) in [-1, 1]
        params = self.mlp(style)  # (B, sum of 4C over blocks)
        x = content
        for block, p in zip(self.res, params.split([b.num_params for b in self.res], dim=1)):
            x = block(x, p)
        return center_crop(self.up(x), self.out_size)


# ---------------------------------------------------------------------------------------------
# Discriminator


DIS_LAYERS = 4  # METHOD.md's discriminator depth (generator.dis_layers unset)


def discriminator_layers(image_size: int, max_layers: int = DIS_LAYERS) -> int:
    """How many 4x4 stride-2 (pad 1) convs fit: each halves the size (floor); stop at 1x1."""
    return max(1, min(max_layers, int(math.log2(image_size))))


class Discriminator(nn.Module):
    """n_layers conv layers (4x4, stride 2, LeakyReLU 0.2; METHOD.md's 4 by default), one scale,
    then a 1x1 conv to one least-squares GAN score per patch. Fewer layers for images too small
    to halve n_layers times."""

    def __init__(self, in_channels: int, dim: int, image_size: int, n_layers: int = DIS_LAYERS):
        super().__init__()
        n = discriminator_layers(image_size, n_layers)
        layers: list[nn.Module] = [ConvBlock(in_channels, dim, 4, stride=2, pad=1, act="lrelu")]
        for _ in range(n - 1):
            layers.append(ConvBlock(dim, 2 * dim, 4, stride=2, pad=1, act="lrelu"))
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1, h, w) patch scores
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# The generator bundle


class Munit(nn.Module):
    """MUNIT's generator: content encoder, style encoder and AdaIN decoder (+ style MLP).

    Images are in [-1, 1]. `spec` holds every constructor argument, so a saved state dict plus
    its spec rebuilds the module (see `Munit.from_spec`).
    """

    def __init__(self, *, in_channels: int, image_size: int, dim: int = 64, style_dim: int = 8,
                 n_downsample: int = 2, n_res: int = 4, mlp_dim: int = 256):
        super().__init__()
        padded = math.ceil(image_size / 2 ** n_downsample)
        if image_size < 8 or padded < 2:
            raise ValueError(f"image_size {image_size} is too small for n_downsample={n_downsample}: "
                             f"the content code would be {padded}x{padded}; use a smaller n_downsample")
        self.spec: dict[str, Any] = dict(in_channels=in_channels, image_size=image_size, dim=dim,
                                         style_dim=style_dim, n_downsample=n_downsample,
                                         n_res=n_res, mlp_dim=mlp_dim)
        self.style_dim = style_dim
        self.content_encoder = ContentEncoder(in_channels, dim, n_downsample, n_res)
        # MUNIT's style encoder goes down 4 times; small images stop while the map is >= 2 px.
        n_style_down = max(1, min(4, int(math.log2(image_size)) - 1))
        self.style_encoder = StyleEncoder(in_channels, dim, style_dim, n_style_down)
        self.decoder = Decoder(self.content_encoder.out_channels, in_channels, n_downsample, n_res,
                               style_dim, mlp_dim, image_size)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Munit":
        return cls(**spec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # (B, C, H, W) -> content (B, D, h, w), style (B, style_dim)
        return self.content_encoder(x), self.style_encoder(x)

    def decode(self, content: Tensor, style: Tensor) -> Tensor:  # -> (B, C, H, W) in [-1, 1]
        return self.decoder(content, style)

    def translate(self, x: Tensor, style: Tensor) -> Tensor:
        """x's content rendered with the given style codes (B, style_dim)."""
        return self.decode(self.content_encoder(x), style)

    def forward(self, x: Tensor) -> Tensor:  # reconstruction: own content, own style
        content, style = self.encode(x)
        return self.decode(content, style)


# ---------------------------------------------------------------------------------------------
# Helpers


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad H and W (split evenly, extra on the bottom/right) up to a multiple."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")


def center_crop(x: Tensor, size: int) -> Tensor:
    """Undo `pad_to_multiple`: keep the central size x size window (same split of the excess)."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal convs and linears, zero biases, unit norm affines, drawn from `generator`
    so that two builds with the same seed are identical without touching the global RNG."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_munit(*, in_channels: int, image_size: int, gcfg: Any, generator: torch.Generator,
                device: torch.device | str = "cpu") -> tuple[Munit, Discriminator]:
    """A freshly initialised generator and discriminator for a GeneratorConfig."""
    # Module constructors draw default inits from the global RNG; fork it so we leave no trace,
    # then overwrite every weight from our own generator.
    with torch.random.fork_rng(devices=[]):
        munit = Munit(in_channels=in_channels, image_size=image_size, dim=gcfg.dim,
                      style_dim=gcfg.style_dim, n_downsample=gcfg.n_downsample, n_res=gcfg.n_res,
                      mlp_dim=gcfg.mlp_dim)
        dis = Discriminator(in_channels, gcfg.dis_dim or gcfg.dim, image_size, n_layers=gcfg.dis_layers or DIS_LAYERS)
    init_weights(munit, generator)
    init_weights(dis, generator)
    return munit.to(device), dis.to(device)
