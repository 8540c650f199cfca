"""Reading and writing model weights: safetensors first; other checkpoints only through
``torch.load(weights_only=True)``, so no pickle from a downloaded file ever runs code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")


def _inert_stand_in(qualname: str) -> type:
    """A stand-in for a global that a checkpoint names outside its weights (an ``argparse.Namespace`` of training
    arguments, Lightning callbacks, numpy scalars): constructing or restoring it yields an empty ``OrderedDict``
    (which the weights-only loader lets absorb items and attributes), so none of the file's code runs."""
    from collections import OrderedDict

    return type(f"_Inert[{qualname}]", (), {"__new__": lambda cls, *args, **kwargs: OrderedDict()})


def _load_weights_only(path: Path):
    """``torch.load(weights_only=True)`` where every global the loader would refuse is an inert stand-in: the
    training checkpoints of MAE (``args``) and taming/Lightning (``callbacks``) load, and still run no code."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint (legacy format or not torch at all): torch.load says what is wrong
        unsafe = []
    with torch.serialization.safe_globals([(_inert_stand_in(name), name) for name in unsafe]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a torch checkpoint (loaded with ``weights_only=True``, training
    metadata outside the weights replaced by inert stand-ins; a ``model``/``state_dict``/``model_state``/``module``
    wrapper and a DDP ``module.`` prefix are removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for truncated or bad headers
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = _load_weights_only(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); convert it to "
                         f".safetensors or a plain state_dict") from exc
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: Union[str, Path], strict: bool = True) -> nn.Module:
    """Loads ``path`` into ``model``. A model's ``adapt_state_dict(state_dict)`` hook, when it has one, converts
    first (a ViT resizes ``pos_embed`` to its grid). Classifier-head tensors whose shapes differ (another
    ``num_classes``) are skipped and left at their initialisation; any other missing, unexpected or misshapen key
    is an error naming the keys."""
    state = read_state_dict(path)
    if hasattr(model, "adapt_state_dict"):
        state = model.adapt_state_dict(state)
    own = model.state_dict()
    head_prefixes = tuple(getattr(model, "head_keys", ("head.",)))
    skipped = [k for k, v in state.items()
               if k.startswith(head_prefixes) and k in own and own[k].shape != v.shape]
    for k in skipped:
        state.pop(k)
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - set(skipped))
    unexpected = sorted(set(state) - set(own))
    if strict and (bad_shapes or missing or unexpected):
        parts = []
        if bad_shapes:
            parts.append("shape mismatch " + "; ".join(bad_shapes[:5]))
        if missing:
            parts.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise ValueError(f"{path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model


def save_safetensors(tensors: dict[str, torch.Tensor], path: Union[str, Path], metadata=None) -> Path:
    """Writes ``tensors`` to ``path`` atomically (a temporary file in the same folder, then a rename), so a crash
    mid-write never leaves a truncated file under the final name. Tensors that share memory (tied weights, a
    module registered under two names, views) are written as separate copies, each under its own key:
    safetensors itself refuses shared storage."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    contiguous, storages = {}, set()
    for key, value in tensors.items():
        value = value.detach().cpu()
        storage = value.untyped_storage()
        whole = value.is_contiguous() and value.numel() * value.element_size() == storage.nbytes()
        if value.numel() and (storage.data_ptr() in storages or not whole):
            value = value.clone(memory_format=torch.contiguous_format)
        storages.add(value.untyped_storage().data_ptr())
        contiguous[key] = value
    try:
        save_file(contiguous, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
