"""The command line of ``pvf train`` / ``pvf eval`` / ``python -m pyvision_fast.train`` and the config it resolves.

One parser serves every entry point, so ``pvf train RECIPE ...`` and ``torchrun ... -m pyvision_fast.train RECIPE
...`` take identical arguments. Resolution order: ``ENGINE_DEFAULTS`` <- the recipe's ``defaults`` <- the dedicated
flags (``--epochs`` ...) <- ``--set key=value`` (values parsed with ``ast.literal_eval``; a value that is not a
Python literal stays a string, so ``--set opt=sgd`` works). An unknown key is an error listing the valid ones.
"""
from __future__ import annotations

import argparse
import ast
from typing import Any, Optional

from .recipe import ENGINE_DEFAULTS, Config

# flag attribute -> config key, for the flags that are shorthands of config keys
_FLAG_KEYS = {"model": "model", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "img_size": "img_size",
              "workers": "workers", "seed": "seed", "device": "device", "eval_samples": "eval_samples",
              "eval_batch_size": "eval_batch_size"}


def parse_value(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"(1, 1)"`` -> (1, 1), ``"None"`` -> None, ``"sgd"`` -> ``"sgd"``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(pairs: Optional[list[str]], flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; a pair without ``=`` is an error naming ``flag``."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The arguments ``train`` and ``eval`` share."""
    p.add_argument("recipe", help="recipe name (pyvision_fast/train/recipes/<name>.py), e.g. classify")
    p.add_argument("--data", required=True, help="dataset folder, in the recipe's format")
    p.add_argument("--model", help="registry model name (pvf models)")
    p.add_argument("--model-arg", nargs="+", action="extend", metavar="K=V",
                   help="create_model keyword arguments, e.g. --model-arg img_size=32 depth=2")
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--eval-batch-size", type=int, help="per process, for evaluation (default: --batch-size)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--workers", type=int, help="data-loader worker processes per process")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="torch.amp autocast on CUDA (ignored, with a note, on CPU)")
    p.add_argument("--set", nargs="+", action="extend", metavar="K=V", dest="overrides",
                   help="config keys, e.g. --set mixup=0 aa=None (an unknown key lists the valid ones)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--eval-samples", type=int, help="images used by slow evaluations (AutoAttack): the first N")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--output", required=True, help="run folder: config.json, metrics.csv, events, checkpoints")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="absolute learning rate (default: the recipe's blr scaled by batch)")
    p.add_argument("--resume", help="a run folder or its train-state-last.pt: continue that run exactly")
    p.add_argument("--overwrite", action="store_true", help="allow an --output that already holds a run")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--checkpoint", required=True, help="model weights (.safetensors, or .pth read weights_only)")


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``python -m pyvision_fast.train`` (``command="train"``) or its ``eval`` twin."""
    p = argparse.ArgumentParser(prog=f"pvf {command}")
    (add_train_args if command == "train" else add_eval_args)(p)
    return p


def resolve_config(recipe_cls, args: argparse.Namespace, base: Optional[dict] = None) -> Config:
    """ENGINE_DEFAULTS <- recipe defaults <- ``base`` (a checkpoint's model/model_args/num_classes, for
    ``pvf eval``) <- flags <- ``--set``; raises ``ValueError`` for unknown keys."""
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(recipe_cls.defaults)  # recipes may add their own keys
    cfg.update(base or {})
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            cfg[key] = value
    if getattr(args, "model_arg", None):
        cfg["model_args"] = {**cfg["model_args"], **parse_pairs(args.model_arg, "--model-arg")}
    if getattr(args, "amp", False):
        cfg["amp"] = True
    if getattr(args, "no_progress", False):
        cfg["progress"] = False
    overrides = parse_pairs(getattr(args, "overrides", None), "--set")
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for recipe {recipe_cls.name!r}; valid keys: "
                         f"{', '.join(sorted(cfg))}")
    cfg.update(overrides)
    if cfg["model"] is None:
        raise ValueError(f"recipe {recipe_cls.name!r} has no default model: pass --model NAME (see pvf models)")
    return cfg
