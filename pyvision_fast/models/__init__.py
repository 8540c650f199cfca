"""Models of the papers pyvision_fast serves, built from ``pyvision_fast.nn``; a registry with timm's
conventions: ``create_model(name, pretrained=False, checkpoint_path=None, **kwargs)``, ``list_models(pattern)``."""
from ._registry import count_parameters, create_model, is_model, list_models, model_accepts, register_model
from .weights import load_weights, read_state_dict, save_safetensors

__all__ = ["count_parameters", "create_model", "is_model", "list_models", "load_weights", "model_accepts",
           "read_state_dict", "register_model", "save_safetensors"]
