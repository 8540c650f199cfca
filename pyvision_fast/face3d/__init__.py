"""3D face modelling for the talking-face editing pipeline (paper 4, docs/talking_face.md): the 3DMM basis
(``basis``: Deep3DFaceRecon's BFM front model layout, coefficient slices), a synthetic basis and talking
sequence for tests (``synthetic``), camera / SH lighting / rasterized rendering (``render``) and
analysis-by-synthesis fitting of per-frame coefficients (``fit``)."""
from .basis import (COEFF_SLICES, N_COEFFS, FaceBasis, load_bfm, mouth_vertex_indices, save_bfm_mat,
                    split_coeffs, vertex_face_table)
from .synthetic import synthetic_face_basis, synthetic_talking_sequence

__all__ = ["COEFF_SLICES", "N_COEFFS", "FaceBasis", "load_bfm", "save_bfm_mat", "split_coeffs",
           "vertex_face_table", "mouth_vertex_indices", "synthetic_face_basis", "synthetic_talking_sequence"]
