"""Appearance augmentation of detection scenes that keeps every object's concept (and its box).

T-Rex2 learns from two artwork styles per concept; with so few drawings a detector learns the
drawings rather than the concepts. These transforms change how an object is drawn -- softness of
its edges, its texture, its contrast, even all of its colours (outline-only) -- but never where it is
or what it is, so the boxes and labels of a scene stay valid. Hue is not touched: many names carry
their colour ("red apple", "green heart"), and a hue shift would make the label wrong.

Every choice comes from a numpy generator the caller seeds (e.g. with the step number), so an
augmented batch is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

BLUR_PROB = 0.3
NOISE_PROB = 0.3
CONTRAST_PROB = 0.5
OUTLINE_PROB = 0.1


def outline(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] -> dark edges on white (a line drawing of the same scene), ``(3, H, W)``."""
    grey = TF.rgb_to_grayscale(image)[None]  # (1, 1, H, W)
    kx = image.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(-1, -2))
    edges = (gx.square() + gy.square()).sqrt()[0]
    return (1.0 - (edges * 2.0).clamp(0.0, 1.0)).expand(3, -1, -1).contiguous()


def augment_image(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One ``(3, H, W)`` image in [0, 1] -> its augmented copy (same size, still in [0, 1])."""
    out = image
    if rng.random() < OUTLINE_PROB:
        out = outline(out)
    if rng.random() < CONTRAST_PROB:
        out = TF.adjust_contrast(out, float(rng.uniform(0.6, 1.4)))
        out = TF.adjust_brightness(out, float(rng.uniform(0.75, 1.25)))
    if rng.random() < BLUR_PROB:
        sigma = float(rng.uniform(0.5, 1.8))
        out = TF.gaussian_blur(out, kernel_size=[5, 5], sigma=[sigma, sigma])
    if rng.random() < NOISE_PROB:
        noise = rng.normal(0.0, float(rng.uniform(0.01, 0.05)), size=tuple(out.shape)).astype(np.float32)
        out = out + torch.from_numpy(noise)
    return out.clamp(0.0, 1.0)


def augment_batch(images: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> augmented copies; image ``b`` uses the generator ``[seed, 4, step, b]``."""
    return torch.stack([augment_image(img, np.random.default_rng([seed, 4, step, b])) for b, img in enumerate(images)])
