"""The papers' losses as plain functions and small modules: ``MarginHead`` / ``arcface_logits`` (ArcFace's
additive angular margin, SCAN-CNN) and ``cosine_logits``."""
from .margin import MarginHead, arcface_logits, cosine_logits

__all__ = ["MarginHead", "arcface_logits", "cosine_logits"]
