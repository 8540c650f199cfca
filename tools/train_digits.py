"""Trains ``pvf train classify`` on scikit-learn's ``load_digits`` written as an ImageFolder and prints the
validation accuracy: the "does it learn a small real set" check of the training engine (not in the test run).

    python tools/train_digits.py [--root /tmp/pvf_digits] [--epochs 60] [extra pvf train flags ...]

The 1797 8x8 digits (values 0..16) are scaled to 0..255, upsampled to 32x32 (nearest) and written as PNG files,
``ROOT/data/{train,val}/<digit>/<i>.png`` with a stratified 80/20 split (seed 0). The model is a 4-block, 96-wide
ViT with 8x8 patches; augmentation is off except the recipe's label smoothing.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path) -> Path:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=0.2, stratify=digits.target,
                                          random_state=0)
    for split, idx in (("train", idx_train), ("val", idx_val)):
        for i in idx:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).resize((32, 32), Image.NEAREST).convert("RGB").save(folder / f"{i:04d}.png")
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/tmp/pvf_digits")
    parser.add_argument("--epochs", type=int, default=60)
    args, extra = parser.parse_known_args(argv)
    root = Path(args.root)
    data = root / "data"
    if not data.is_dir():
        write_digits(data)
    shutil.rmtree(root / "run", ignore_errors=True)
    from pyvision_fast import cli

    rc = cli.main(["train", "classify", "--data", str(data), "--output", str(root / "run"),
                   "--model", "vit_tiny_patch16_224", "--model-arg", "patch_size=8", "depth=4", "embed_dim=96",
                   "num_heads=3", "--img-size", "32", "--epochs", str(args.epochs), "--batch-size", "64",
                   "--workers", "0", "--lr", "2e-3", "--no-progress",
                   "--set", "aa=None", "mixup=0", "cutmix=0", "reprob=0", "hflip=0", "scale=(1.0, 1.0)",
                   "ratio=(1.0, 1.0)", "color_jitter=None", "crop_pct=1.0", "warmup_epochs=3", *extra])
    if rc:
        return rc
    rc = cli.main(["eval", "classify", "--data", str(data), "--checkpoint", str(root / "run" /
                   "checkpoint-best.safetensors"), "--img-size", "32", "--workers", "0", "--set", "crop_pct=1.0"])
    return rc


if __name__ == "__main__":
    sys.exit(main())
