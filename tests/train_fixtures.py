"""Small image sets in ImageFolder layout (real PNG and JPEG files) for the training-engine tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("hstripes", "vstripes", "checker", "flat")


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image (size, size, 3) of class ``label``: horizontal stripes, vertical stripes, a
    checkerboard (bands 2 or 4 pixels wide, random phase) or a flat field, each in its own hue (red, green, blue,
    yellow) at a random brightness, with pixel noise. Separable by colour alone; the patterns make it less
    trivial than that for a model that ignores it."""
    width = int(rng.choice([2, 4]))
    yy, xx = np.mgrid[:size, :size] + rng.integers(0, width * 2, size=2)[:, None, None]
    bands = [(yy // width) % 2, (xx // width) % 2, ((yy // width) + (xx // width)) % 2,
             np.full((size, size), 0.5)][label]
    hue = np.array([(1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.2, 1.0), (1.0, 1.0, 0.2)][label])
    colour = hue * rng.uniform(0.6, 1.0)
    img = bands[..., None] * colour + rng.normal(0, 0.05, size=(size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_image_folder(root: Path, n_train: int = 24, n_val: int = 8, size: int = 32, n_classes: int = 4,
                       seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.{png,jpg}`` with ``n_train``/``n_val`` images per class, every other one a
    JPEG (quality 95); returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for label in range(n_classes):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pattern(label, size, rng)).save(folder / f"{i:04d}.{'jpg' if i % 2 else 'png'}",
                                                                quality=95)
    return root


# A 2-block, 64-wide ViT on 32x32 inputs (16 patches of 8x8): ~0.1M parameters, no dropout or drop-path.
TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-arg", "patch_size=8", "depth=2", "embed_dim=64",
            "num_heads=2", "--img-size", "32"]
# classify without any random augmentation: the transform is resize + normalise only.
NO_AUG = ["--set", "aa=None", "mixup=0", "cutmix=0", "reprob=0", "hflip=0", "scale=(1.0, 1.0)",
          "ratio=(1.0, 1.0)", "color_jitter=None", "crop_pct=1.0"]
