"""Dataset readers for the papers' real formats, samplers and transforms."""
from .image_folder import IMG_EXTENSIONS, ImageFolder, find_classes

__all__ = ["IMG_EXTENSIONS", "ImageFolder", "find_classes"]
