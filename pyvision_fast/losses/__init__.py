"""The papers' losses as plain functions and small modules:

- ``margin``: ``MarginHead`` / ``arcface_logits`` (ArcFace's additive angular margin, SCAN-CNN), ``cosine_logits``;
- ``pointcat``: supervised contrastive, centralising, noise-generator and C&W margin losses (PointCAT);
- ``mutual_info``: MI bounds and the CIB term (CLUB, InfoNCE/NWJ/MINE/JSD, Gaussian split, symmetrised KL;
  CIB-LXMERT).
"""
from .margin import MarginHead, arcface_logits, cosine_logits
from .mutual_info import (CLUB, MVMIEstimator, cib_terms, club_upper_bound, gaussian_split, infonce_lower_bound,
                          jsd_lower_bound, match_tokens, mine_lower_bound, nwj_lower_bound, symmetric_kl)
from .pointcat import centralizing_loss, cw_margin_loss, generator_loss, supcon_loss
from .talking_face import mouth_shape_loss, mouth_vertex_distance

__all__ = ["CLUB", "MVMIEstimator", "MarginHead", "arcface_logits", "centralizing_loss", "cib_terms",
           "club_upper_bound", "cosine_logits", "cw_margin_loss", "gaussian_split", "generator_loss",
           "infonce_lower_bound", "jsd_lower_bound", "match_tokens", "mine_lower_bound", "nwj_lower_bound",
           "supcon_loss", "symmetric_kl", "mouth_shape_loss", "mouth_vertex_distance"]
