"""Invariance metrics: KL divergence between predictions and the paper's eKLD estimator.

eKLD_c = E_{x in test images of class c} E_{x' ~ T(.|x)} KL(f(x) || f(x')): for each class, a
random choice of its test images; f(x) on the image as shown (with its own nuisance draw),
f(x') on fresh nuisance draws of the clean image. Consistency_c is the fraction of draws whose
argmax equals the argmax on the shown image. All (image, draw) pairs run through the model in
batches, so the model sees many images x draws per call.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Predict = Callable[[Tensor], Tensor]  # (B, C, H, W) images -> (B, K) logits
Nuisance = Callable[[Tensor, torch.Generator], Tensor]  # (B, C, H, W) -> same shape


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p) || softmax(q)) over the last dim: (..., K), (..., K) -> (...)."""
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    p = log_p.exp()
    # 0 * log 0 = 0: where p vanishes the term is zero even if log q is -inf.
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0)  # rounding can give -1e-9 for identical inputs


def choose_images(y: Tensor, num_classes: int, images_per_class: int,
                  generator: torch.Generator) -> Tensor:
    """Indices (M,) of up to `images_per_class` images per class, chosen at random, by class."""
    y = y.detach().cpu()
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(y == c).flatten()  # (n_c,)
        order = torch.randperm(len(members), generator=generator, device=generator.device).cpu()
        chosen.append(members[order[:images_per_class]])
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)


def _predict_in_chunks(predict: Predict, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([predict(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def ekld(predict: Predict, x_shown: Tensor, x_clean: Tensor, y: Tensor, nuisance: Nuisance, *,
         images_per_class: int, draws: int, num_classes: int, generator: torch.Generator,
         batch_size: int, forward_batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-class eKLD (K,) and consistency (K,), float64 on CPU; nan for a class with no images.

    `x_shown` are the evaluated images (nuisance applied), `x_clean` the same images before it;
    `generator` picks the images and drives every nuisance draw, so the estimate is reproducible.
    Draws are made `batch_size` pairs at a time (that fixes which random numbers each pair gets);
    the model sees `forward_batch_size` images per call (default `batch_size`), which changes
    only speed and float rounding.
    """
    forward = forward_batch_size or batch_size
    sel = choose_images(y, num_classes, images_per_class, generator).to(x_clean.device)  # (M,)
    cls = y.detach().to(x_clean.device)[sel]  # (M,)
    ref = _predict_in_chunks(predict, x_shown[sel], forward)  # (M, K)
    ref_pred = ref.argmax(dim=1)  # (M,)

    kl_sum = torch.zeros(num_classes, dtype=torch.float64, device=ref.device)
    agree = torch.zeros(num_classes, dtype=torch.float64, device=ref.device)
    pairs = torch.arange(len(sel) * draws, device=x_clean.device)  # pair j = image j // draws
    for start in range(0, len(pairs), batch_size):
        img = pairs[start:start + batch_size] // draws  # (b,) rows into sel
        x_new = nuisance(x_clean[sel[img]], generator)  # (b, C, H, W): a fresh draw per pair
        out = _predict_in_chunks(predict, x_new, forward)  # (b, K)
        img, c = img.to(ref.device), cls[img].to(ref.device)
        kl_sum.index_add_(0, c, kl_divergence(ref[img], out).double())
        agree.index_add_(0, c, (out.argmax(dim=1) == ref_pred[img]).double())

    n_pairs = torch.bincount(cls.to(ref.device), minlength=num_classes).double() * draws  # (K,)
    nan = torch.full_like(n_pairs, math.nan)
    ekld_c = torch.where(n_pairs > 0, kl_sum / n_pairs.clamp_min(1), nan)
    consistency = torch.where(n_pairs > 0, agree / n_pairs.clamp_min(1), nan)
    return ekld_c.cpu(), consistency.cpu()
