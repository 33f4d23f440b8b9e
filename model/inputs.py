"""Model inputs: synthetic frames of any size, and real images with upstream's preprocessing."""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
TARGET_WIDTH = 518
PATCH = 14


def synthetic_images(frames: int, height: int, width: int, batch: int = 1, seed: int = 0, device="cpu") -> torch.Tensor:
    """``[B, S, 3, H, W]`` uniform in [0, 1] from a seeded generator (timing does not depend on content)."""
    if frames < 1 or batch < 1:
        raise ValueError(f"frames and batch must be >= 1, got frames={frames}, batch={batch}")
    if height % PATCH or width % PATCH or height < PATCH or width < PATCH:
        raise ValueError(f"image height and width must be positive multiples of {PATCH}, got {height} x {width}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(batch, frames, 3, height, width, generator=gen).to(device)


def list_images(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def _to_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def _pad_to(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    dh, dw = height - img.shape[1], width - img.shape[2]
    if dh <= 0 and dw <= 0:
        return img
    top, left = dh // 2, dw // 2
    return torch.nn.functional.pad(img, (left, dw - left, top, dh - top), value=1.0)


def load_images(paths: Sequence[str], mode: str = "crop") -> torch.Tensor:
    """Load images as upstream's ``load_and_preprocess_images``: ``[S, 3, H, W]`` in [0, 1].

    ``crop``: width 518, height scaled to keep the aspect ratio (rounded to a multiple of 14),
    centre-cropped to 518 if taller. ``pad``: the longer side 518, the other scaled and rounded
    to a multiple of 14, then padded with white to 518 x 518. Alpha is composited on white;
    images of different resulting sizes are padded with white to the largest.
    """
    from PIL import Image

    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    if not paths:
        raise ValueError("at least one image is required")
    out = []
    for path in paths:
        img = Image.open(path)
        if img.mode == "RGBA":
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
        w, h = img.size
        if mode == "pad" and h > w:
            new_h, new_w = TARGET_WIDTH, round(w * (TARGET_WIDTH / h) / PATCH) * PATCH
        else:
            new_w, new_h = TARGET_WIDTH, round(h * (TARGET_WIDTH / w) / PATCH) * PATCH
        t = _to_tensor(img.resize((new_w, new_h), Image.Resampling.BICUBIC))
        if mode == "crop" and new_h > TARGET_WIDTH:
            top = (new_h - TARGET_WIDTH) // 2
            t = t[:, top : top + TARGET_WIDTH]
        if mode == "pad":
            t = _pad_to(t, TARGET_WIDTH, TARGET_WIDTH)
        out.append(t)
    height = max(t.shape[1] for t in out)
    width = max(t.shape[2] for t in out)
    return torch.stack([_pad_to(t, height, width) for t in out])


def image_folder(folder: str, frames: int, mode: str = "crop", batch: int = 1, device="cpu") -> torch.Tensor:
    """``[B, S, 3, H, W]`` from the first ``frames`` images of ``folder`` (cycled if it holds fewer)."""
    files = list_images(folder)
    chosen = [files[i % len(files)] for i in range(frames)]
    images = load_images(chosen, mode)
    return images.unsqueeze(0).expand(batch, -1, -1, -1, -1).contiguous().to(device)
