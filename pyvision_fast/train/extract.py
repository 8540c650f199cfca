"""``pvf extract paver``: PAVER's frozen encoder run once over Wild360, one feature file per video
(``pvf extract talking_face``, the texture latents of a MEAD folder, is :mod:`pyvision_fast.face3d.extract`).

    pvf extract paver --data WILD360 --output FEATDIR [--checkpoint ENCODER_WEIGHTS] [--split train|test|all]
                      [--model-arg K=V ...] [--device auto|cpu|cuda] [--dtype float16|float32] [--no-progress]

Every listed video of the split(s) (:mod:`pyvision_fast.data.wild360`; all are probed and checked first, so a
bad dataset fails before any encoding) is decoded whole at the model's frame size (H x 2H, H =
``img_size``; uint8, 0.3 GB per 1000 frames at 224x448), passed through ``PAVER.preprocess`` and
``PAVER.encode`` ``chunk`` frames at a time (the encoder is frozen; no gradient), and written to
``FEATDIR/{vid}.safetensors``: ``frame`` (T, N, D) and ``cls`` (T, D) in ``dtype`` — float16 by default (half
the disk: 0.6 MB per frame at ViT-B/16 224x448; a value beyond float16's range is an error asking for
``--dtype float32``) — with the settings (model, arguments, encoder checkpoint, frame size, dtype) in the
file's metadata. Test videos also get their GT maps resized to 120x240 once, in
``FEATDIR/gt/{vid}.safetensors`` (:func:`pyvision_fast.data.wild360.write_gt_cache`), which the evaluations
read. Files are written atomically (temporary file, then rename), so an interrupted run leaves no partial
file; a rerun skips the videos whose file exists with the same settings and frame count (resumable) and
refuses to mix features extracted with other settings. ``--checkpoint`` is the encoder's weights: a timm
``vit_base_patch16_224`` (augreg) state_dict as ``.safetensors`` or ``.pth`` (timm's ``.npz`` must be
converted by timm first), passed to the model as ``encoder_checkpoint``; without it the encoder is randomly
initialised, which only makes sense for tests, and a warning says so.

Under torchrun each process takes every ``WORLD_SIZE``-th video (no process group is needed); the progress bar
(tqdm, per video) shows on rank 0 when stdout is a terminal, never with ``--no-progress``.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..data.wild360 import (GT_SIZE, SPLITS, Wild360Videos, feature_path, gt_cache_frames, gt_cache_path,
                            read_feature_header, save_atomic, write_gt_cache)

__all__ = ["extract_features", "add_extract_args", "FEATURE_DTYPES"]

FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _settings(model_name: str, model_args: dict, checkpoint, size, dtype: str) -> dict[str, str]:
    return {"model": model_name, "model_args": json.dumps(model_args, sort_keys=True, default=str),
            "encoder_checkpoint": str(checkpoint) if checkpoint else "", "frame_size": f"{size[0]}x{size[1]}",
            "dtype": dtype}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA device is available")
    return torch.device(name)


def _done(path: Path, settings: dict[str, str], num_frames: int) -> bool:
    """True when ``path`` holds this video's features with ``settings``; False when there is no file; an error
    when it holds features made otherwise."""
    if not path.is_file():
        return False
    frame, _, meta = read_feature_header(path)
    theirs = {k: meta.get(k) for k in settings}
    if theirs != settings:
        diff = {k: (theirs[k], settings[k]) for k in settings if theirs[k] != settings[k]}
        raise ValueError(f"{path} was extracted with other settings {diff} (file, now); use another --output "
                         "or delete the old files")
    if frame[0] != num_frames:
        raise ValueError(f"{path} holds {frame[0]} frames, the video has {num_frames}; delete it to "
                         "re-extract")
    return True


def extract_features(data: Union[str, os.PathLike], output: Union[str, os.PathLike], *, model: str = "paver",
                     checkpoint: Optional[str] = None, split: str = "all", model_args: Optional[dict] = None,
                     device: str = "auto", dtype: str = "float16", chunk: int = 25,
                     progress: bool = True) -> dict[str, Any]:
    """Extracts the features of ``split`` (``train``, ``test`` or ``all``) of the Wild360 folder ``data`` into
    ``output`` (module docstring). Returns ``{"written": [vid], "skipped": [vid], "gt_written": [vid],
    "output": str}`` for the videos of this process."""
    from tqdm import tqdm

    from ..models import create_model, is_model

    if split not in (*SPLITS, "all"):
        raise ValueError(f"--split must be train, test or all, got {split!r}")
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(FEATURE_DTYPES)}, got {dtype!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not is_model(model):
        raise ValueError(f"unknown model {model!r}")
    model_args = dict(model_args or {})
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist (the encoder's weights)")
        model_args["encoder_checkpoint"] = str(checkpoint)
    dev = _device(device)
    net = create_model(model, **model_args).eval().to(dev)
    size = (int(net.img_size), 2 * int(net.img_size))
    videos = Wild360Videos(data, SPLITS if split == "all" else split, size=size)
    if model_args.get("encoder_checkpoint") is None:
        warnings.warn("pvf extract: no --checkpoint, the encoder is randomly initialised (tests only)",
                      stacklevel=2)
    settings = _settings(model, {k: v for k, v in model_args.items() if k != "encoder_checkpoint"},
                         model_args.get("encoder_checkpoint"), size, dtype)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    mine = list(range(rank, len(videos), world))
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped, gt_written = [], [], []
    show = progress and rank == 0 and sys.stdout.isatty()
    bar = tqdm(mine, desc="pvf extract", unit="video", disable=not show)
    for i in bar:
        info = videos.videos[i]
        path = feature_path(out_dir, info.vid)
        if info.gt_dir is not None:  # a test video: its GT maps at 120x240 for the evaluations
            cache = gt_cache_path(out_dir, info.vid)
            if not cache.is_file() or gt_cache_frames(cache, GT_SIZE) != info.num_frames:
                write_gt_cache(info, out_dir)
                gt_written.append(info.vid)
        if _done(path, settings, info.num_frames):
            skipped.append(info.vid)
            continue
        frames, _ = videos[i]
        tokens = []
        with torch.no_grad():
            for part in frames.split(chunk):
                x = net.preprocess(part.to(dev))[None]
                tokens.append(net.encode(x)[0].float().cpu())
        tokens = torch.cat(tokens)
        if dtype == "float16" and tokens.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError(f"{info.path}: features up to {tokens.abs().max():.4g} exceed float16's range; "
                             "use --dtype float32")
        tensors = {"cls": tokens[:, 0].contiguous(), "frame": tokens[:, 1:].contiguous()}
        tensors = {k: v.to(FEATURE_DTYPES[dtype]) for k, v in tensors.items()}
        save_atomic(tensors, path, {**settings, "video": info.vid, "split": info.split,
                                     "num_frames": str(info.num_frames)})
        written.append(info.vid)
    return {"written": written, "skipped": skipped, "gt_written": gt_written, "output": str(out_dir)}


def add_extract_args(p) -> None:
    """The arguments of ``pvf extract``."""
    p.add_argument("recipe", choices=("paver", "talking_face"),
                   help="what to extract (paver: Wild360 encoder features; talking_face: MEAD texture latents)")
    p.add_argument("--data", required=True,
                   help="paver: the Wild360 folder (train.txt, test.txt, data/, Wild360_GT_29/); talking_face: "
                   "the MEAD folder (the latents are written into it)")
    p.add_argument("--output", help="paver: feature folder, one {vid}.safetensors per video")
    p.add_argument("--checkpoint", help="paver: the encoder weights (a timm vit_base_patch16_224 state_dict, "
                   ".safetensors or .pth; random without it); talking_face: the texture generator (pvf train "
                   "texture_gan checkpoint-ema-last.safetensors)")
    p.add_argument("--bfm", help="talking_face: BFM_model_front.mat")
    p.add_argument("--view", nargs="+", default=["front"], help="talking_face: MEAD camera views")
    p.add_argument("--align", action="store_true", help="talking_face: the coefficients are those of aligned "
                   "crops (from the clips' landmarks)")
    p.add_argument("--fit-size", type=int, nargs=2, metavar=("H", "W"),
                   help="talking_face: the size the coefficients were fitted at (default 224 224 with --align, "
                   "else each video's frame size)")
    p.add_argument("--invert-steps", type=int, default=200, help="talking_face: Adam steps of the inversion")
    p.add_argument("--split", default="all", choices=("train", "test", "all"))
    p.add_argument("--model-arg", nargs="+", action="extend", metavar="K=V",
                   help="create_model keyword arguments, e.g. --model-arg img_size=224")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="float16", choices=tuple(FEATURE_DTYPES))
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def run_extract(args) -> dict[str, Any]:
    """``pvf extract`` with parsed ``args``."""
    from .config import parse_pairs

    if args.recipe == "talking_face":
        from ..face3d.extract import extract_mead_latents

        if not args.checkpoint:
            raise ValueError("pvf extract talking_face needs --checkpoint: the texture generator")
        if not args.bfm:
            raise ValueError("pvf extract talking_face needs --bfm: BFM_model_front.mat")
        if args.bfm != "synthetic" and not Path(args.bfm).is_file():
            raise FileNotFoundError(f"--bfm {args.bfm!r} does not exist")
        generator = args.checkpoint
        if args.model_arg:
            from ..face3d.latents import load_texture_generator

            generator = load_texture_generator(args.checkpoint, parse_pairs(args.model_arg, "--model-arg"))
        return extract_mead_latents(args.data, generator, args.bfm, views=tuple(args.view), align=args.align,
                                    fit_size=tuple(args.fit_size) if args.fit_size else None,
                                    steps=args.invert_steps, dtype=args.dtype, device=str(_device(args.device)),
                                    progress=not args.no_progress)
    if not args.output:
        raise ValueError("pvf extract paver needs --output: the feature folder")
    return extract_features(args.data, args.output, model=args.recipe, checkpoint=args.checkpoint,
                            split=args.split, model_args=parse_pairs(args.model_arg, "--model-arg"),
                            device=args.device, dtype=args.dtype, progress=not args.no_progress)
