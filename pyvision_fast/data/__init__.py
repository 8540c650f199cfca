"""Dataset readers for the papers' real formats, samplers and transforms.

- ``ImageFolder`` (``DIR/<split>/<class>/*``, timm's and torchvision's layout);
- facial expression recognition: ``RAFDB`` (basic), ``AffectNet`` (the official CSV lists), ``FERPlus``
  (``fer2013new.csv`` votes), ``build_fer_dataset(name, root, split)``;
- ``class_balanced_weights`` and ``DistributedWeightedSampler`` (class-balanced sampling, DDP-aware);
- the MAE-SFER RAF-DB transforms and timm's ``create_transform`` behind ``timm_transform``;
- video: ``probe_video`` / ``read_video`` (PyAV), the Wild360 layout (``Wild360Videos``, ``Wild360Features``: PAVER),
  mmaction/MVFNet datalists of frame folders or videos (``VideoDatalist``, ``read_datalist``);
- ``NYUv2`` from NDDR-CNN's list files (segmentation + surface normals);
- ModelNet40: ``ModelNet40Normal`` (``modelnet40_normal_resampled`` text files), ``ModelNet40H5``
  (``modelnet40_ply_hdf5_2048``), point augmentations (dropout, scale, shift, jitter);
- multi-label: ``CocoMultiLabel`` (COCO instances JSON), ``NusWide`` (NUS-WIDE lists and label files);
- VQA v2: ``VQADataset`` (question/annotation JSONs, answer vocabulary, soft scores), ``RegionFeatures`` (HDF5
  region features), VQA-Rephrasings and VQA-CE readers, ``load_bert_tokenizer`` (local vocab).
"""
from .fer import FER_DATASETS, AffectNet, FERDataset, FERFormatError, FERPlus, RAFDB, build_fer_dataset
from .image_folder import IMG_EXTENSIONS, ImageFolder, find_classes
from .modelnet40 import (Compose, Jitter, ModelNet40H5, ModelNet40Normal, RandomPointDropout, RandomScale, RandomShift,
                         detect_modelnet40_format, modelnet40_splits, pc_normalize)
from .multilabel import CocoMultiLabel, NusWide
from .nyuv2 import NYUv2
from .samplers import DistributedWeightedSampler, class_balanced_weights, weighted_sampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, rafdb_eval_transform, rafdb_train_transform, timm_transform
from .video import probe_video, read_video
from .video_datalist import VideoDatalist, read_datalist
from .vqa import RegionFeatures, VQADataset, load_bert_tokenizer, load_vqa_ce, rephrasing_groups, vqa_files
from .wild360 import Wild360Features, Wild360Videos
from .mead import MEAD_EMOTIONS, MEADEditPairs, scan_mead

__all__ = [
    "AffectNet", "DistributedWeightedSampler", "FERDataset", "FERFormatError", "FERPlus", "FER_DATASETS",
    "IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "ImageFolder", "NYUv2", "RAFDB", "VideoDatalist",
    "Wild360Features", "Wild360Videos", "build_fer_dataset", "class_balanced_weights", "find_classes", "probe_video",
    "rafdb_eval_transform", "rafdb_train_transform", "read_datalist", "read_video", "timm_transform",
    "weighted_sampler", "CocoMultiLabel", "NusWide", "RegionFeatures", "VQADataset", "load_bert_tokenizer",
    "load_vqa_ce", "rephrasing_groups", "vqa_files", "Compose", "Jitter", "ModelNet40H5", "ModelNet40Normal",
    "RandomPointDropout", "RandomScale", "RandomShift", "detect_modelnet40_format", "modelnet40_splits",
    "pc_normalize", "MEAD_EMOTIONS", "MEADEditPairs", "scan_mead"]
