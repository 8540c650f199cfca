"""Recipes by name: ``pyvision_fast/train/recipes/<name>.py`` defines ``RECIPE``, a ``Recipe`` subclass."""
from __future__ import annotations

import importlib
import pkgutil

from ..recipe import Recipe


def list_recipes() -> list[str]:
    """Sorted names of the recipe modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_recipe(name: str) -> type[Recipe]:
    """The ``RECIPE`` class of recipe ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    known = list_recipes()
    if name not in known:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(known)}")
    module = importlib.import_module(f"{__name__}.{name}")
    recipe = getattr(module, "RECIPE", None)
    if not (isinstance(recipe, type) and issubclass(recipe, Recipe)):
        raise TypeError(f"recipe module {module.__name__} must define RECIPE = <a Recipe subclass>")
    return recipe
