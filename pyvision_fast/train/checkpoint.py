"""Run folders and checkpoints: atomic writes, the model weights as safetensors (with the model's name and
arguments in the metadata) and the training state as a ``torch.load(weights_only=True)``-safe dict."""
from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..models import read_state_dict, save_safetensors

MODEL_LAST = "checkpoint-last.safetensors"
EMA_LAST = "checkpoint-ema-last.safetensors"
MODEL_BEST = "checkpoint-best.safetensors"
TRAIN_STATE = "train-state-last.pt"
RUN_MARKERS = ("config.json", "metrics.csv", MODEL_LAST, TRAIN_STATE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def model_identity(cfg) -> dict[str, str]:
    """What a checkpoint records about its model (safetensors metadata: str -> str)."""
    return {"model": str(cfg.model), "model_args": json.dumps(cfg.model_args, sort_keys=True, default=str),
            "num_classes": json.dumps(cfg.num_classes), "img_size": json.dumps(cfg.img_size)}


def save_model(model: torch.nn.Module, path: Path, cfg, extra: Optional[dict[str, str]] = None) -> None:
    save_safetensors(model.state_dict(), path, metadata={**model_identity(cfg), **(extra or {})})


def read_model_identity(path: Union[str, Path]) -> dict[str, Any]:
    """The model name/args/num_classes/img_size stored in a checkpoint written by the engine ({} for other
    files)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "model" not in meta:
        return {}
    identity = {"model": meta["model"], "model_args": json.loads(meta.get("model_args", "{}")),
                "num_classes": json.loads(meta.get("num_classes", "null"))}
    if "img_size" in meta:
        identity["img_size"] = json.loads(meta["img_size"])
    return identity


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as tensors/ints/lists (``weights_only``-loadable)."""
    version, inner, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [version, list(inner), gauss],
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                       float(np_gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def resolve_resume(path: Union[str, Path]) -> tuple[Path, Path]:
    """``(train-state file, model file)`` of a run folder or of its ``train-state-last.pt``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    state, model = folder / TRAIN_STATE, folder / MODEL_LAST
    for p in (state, model):
        if not p.is_file():
            raise FileNotFoundError(f"--resume {str(path)!r}: {p} does not exist (give a run folder written by "
                                    f"pvf train, or its {TRAIN_STATE})")
    return state, model


def load_train_state(path: Path, cfg) -> dict[str, Any]:
    """Reads a training state with ``weights_only=True`` and checks that it belongs to the same model."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    mine, theirs = model_identity(cfg), state.get("model_identity", {})
    diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
    if diff:
        detail = "; ".join(f"{k}: checkpoint {a} vs this run {b}" for k, (a, b) in diff.items())
        raise ValueError(f"--resume {path}: the checkpoint is of another model ({detail})")
    return state


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Strict load of an engine checkpoint (every key and shape must match)."""
    model.load_state_dict(read_state_dict(path), strict=True)


def check_output_dir(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuses an ``--output`` that already holds a run unless resuming into it or told to overwrite."""
    found = [m for m in RUN_MARKERS if (output / m).exists()]
    if found and not (resume or overwrite):
        raise FileExistsError(f"--output {str(output)!r} already holds a run ({', '.join(found)}); pass --resume "
                              f"to continue it or --overwrite to replace it")


def clear_run(output: Path) -> None:
    """``--overwrite``: removes what an earlier run wrote to ``output`` (config, metrics, checkpoints, TensorBoard
    event files), so nothing stale is mixed with the new run; other files are left alone."""
    for name in (*RUN_MARKERS, MODEL_BEST, EMA_LAST):
        (output / name).unlink(missing_ok=True)
    for events in output.glob("events.out.tfevents.*"):
        events.unlink()


class MetricsLog:
    """``metrics.csv``: one row per (epoch, split) with ``loss`` and each scalar metric; rewritten atomically
    with the union of the columns seen so far. Rows of epochs before ``start_epoch`` survive a resume."""

    def __init__(self, path: Path, start_epoch: int = 0):
        self.path, self.rows = path, []
        if start_epoch > 0 and path.is_file():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start_epoch]

    def add(self, epoch: int, split: str, values: dict[str, float]) -> None:
        self.rows.append({"epoch": epoch, "split": split, **values})
        columns = ["epoch", "split", "loss"]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
