"""The training engine (``engine.py``), the recipe contract (``recipe.py``) and the recipes (``recipes/``).

``pvf train RECIPE --data DIR --output DIR ...`` or ``torchrun --nproc-per-node N -m pyvision_fast.train RECIPE ...``
trains; ``pvf eval RECIPE --data DIR --checkpoint PATH`` evaluates. Importing this package stays light: the engine
is imported on first use.
"""
from .recipe import ENGINE_DEFAULTS, Config, Recipe, StepContext
from .recipes import get_recipe, list_recipes

__all__ = ["ENGINE_DEFAULTS", "Config", "Recipe", "StepContext", "get_recipe", "list_recipes"]
