"""Sphere geometry for equirectangular (ERP) images: tangent-plane sampling positions and sampling tables."""
from . import equirect

__all__ = ["equirect"]
