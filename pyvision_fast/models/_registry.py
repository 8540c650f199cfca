"""The model registry: ``register_model`` decorates a factory, ``create_model`` builds by name with timm's
conventions (keyword arguments override the factory's defaults; ``pretrained``/``checkpoint_path`` load local
weights), ``list_models`` lists names by glob pattern."""
from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path
from typing import Callable, Optional, Union

from torch import nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
# name -> the weight file pretrained=True looks for when no path is given, with where it comes from
_PRETRAINED_FILES: dict[str, str] = {}


def register_model(fn: Optional[Callable] = None, *, pretrained_file: Optional[str] = None):
    """Decorator: registers ``fn`` under its function name. ``pretrained_file`` names the weight file (and its
    origin) that ``create_model(name, pretrained=True)`` needs, used in the error when it is not given."""

    def wrap(f):
        name = f.__name__
        if name in _FACTORIES:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        _FACTORIES[name] = f
        if pretrained_file:
            _PRETRAINED_FILES[name] = pretrained_file
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    """Imports every public module and package of ``pyvision_fast.models`` once: model modules register their
    factories on import, so a new paper's module needs no line here."""
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil

    from . import __path__ as package_path

    for info in sorted(pkgutil.iter_modules(package_path), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name not in _NOT_MODEL_MODULES:
            importlib.import_module(f"{__package__}.{info.name}")
    _LOADED = True


_LOADED = False
_NOT_MODEL_MODULES = {"weights"}


def list_models(pattern: Optional[str] = None) -> list[str]:
    """Sorted names of the registered models, filtered by a glob ``pattern`` (``"vit_*"``) when given."""
    _ensure_loaded()
    names = sorted(_FACTORIES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _FACTORIES


def create_model(name: str, pretrained: bool = False, checkpoint_path: Union[str, Path, None] = None,
                 **kwargs) -> nn.Module:
    """Builds the registered model ``name``; ``kwargs`` (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
    ``num_heads``, ``num_classes``, ``drop_path_rate``, ...) override its defaults, as in ``timm.create_model``.

    ``checkpoint_path`` (or ``pretrained=True`` with ``checkpoint_path``) loads local weights: a ``.safetensors``
    file, or a ``.pth``/``.pt``/``.bin`` checkpoint read with ``torch.load(weights_only=True)`` (a ``model``,
    ``state_dict`` or ``model_state`` entry is unwrapped). Nothing is downloaded: ``pretrained=True`` without a
    path raises an error naming the file the model needs. A classifier head whose shape differs from the
    checkpoint's (another ``num_classes``) is left at its initialisation; every other key must match."""
    _ensure_loaded()
    if name not in _FACTORIES:
        close = fnmatch.filter(sorted(_FACTORIES), f"*{name.split('_')[0]}*")
        hint = f"; similar: {', '.join(close[:8])}" if close else ""
        raise ValueError(f"create_model: unknown model {name!r}{hint} (see pyvision_fast.models.list_models())")
    factory = _FACTORIES[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"create_model({name!r}): unknown argument(s) {unknown}; accepted: {sorted(params)}")
    model = factory(**kwargs)
    if pretrained and checkpoint_path is None:
        needed = _PRETRAINED_FILES.get(name, f"a state_dict of {name} (timm's keys)")
        raise FileNotFoundError(
            f"create_model({name!r}, pretrained=True): nothing is downloaded; pass checkpoint_path= pointing to "
            f"{needed} as .safetensors or .pth")
    if checkpoint_path is not None:
        from .weights import load_weights

        load_weights(model, checkpoint_path)
    return model


def model_accepts(name: str, argument: str) -> bool:
    """Whether registered model ``name``'s factory takes keyword ``argument`` (by name or through ``**kwargs``)."""
    _ensure_loaded()
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r} (see pyvision_fast.models.list_models())")
    params = inspect.signature(_FACTORIES[name]).parameters
    return argument in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
