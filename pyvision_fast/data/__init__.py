"""Dataset readers for the papers' real formats, samplers and transforms.

- ``ImageFolder`` (``DIR/<split>/<class>/*``, timm's and torchvision's layout);
- facial expression recognition: ``RAFDB`` (basic), ``AffectNet`` (the official CSV lists), ``FERPlus``
  (``fer2013new.csv`` votes), ``build_fer_dataset(name, root, split)``;
- ``class_balanced_weights`` and ``DistributedWeightedSampler`` (class-balanced sampling, DDP-aware);
- the MAE-SFER RAF-DB transforms and timm's ``create_transform`` behind ``timm_transform``.
"""
from .fer import FER_DATASETS, AffectNet, FERDataset, FERFormatError, FERPlus, RAFDB, build_fer_dataset
from .image_folder import IMG_EXTENSIONS, ImageFolder, find_classes
from .samplers import DistributedWeightedSampler, class_balanced_weights, weighted_sampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, rafdb_eval_transform, rafdb_train_transform, timm_transform

__all__ = [
    "AffectNet", "DistributedWeightedSampler", "FERDataset", "FERFormatError", "FERPlus", "FER_DATASETS",
    "IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "ImageFolder", "RAFDB", "build_fer_dataset",
    "class_balanced_weights", "find_classes", "rafdb_eval_transform", "rafdb_train_transform", "timm_transform",
    "weighted_sampler",
]
