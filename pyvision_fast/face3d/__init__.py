"""3D face modelling for the talking-face editing pipeline (paper 4, docs/talking_face.md): the 3DMM basis
(``basis``: Deep3DFaceRecon's BFM front model layout, coefficient slices), a synthetic basis and talking
sequence for tests (``synthetic``), camera / SH lighting / rasterized rendering (``render``),
analysis-by-synthesis fitting of per-frame coefficients (``fit``), face crops and paste-back (``align``), UV
texture unwrapping (``texture``), StyleGAN W+ inversion of the textures (``latents``) and the video editor
(``edit_video``). The model itself is ``pyvision_fast.models.bfm.BFM`` (``create_model("bfm", ...)``)."""
from .align import (alignment_template, crop_faces, estimate_alignment, five_points, invert_alignment,
                    paste_faces, smooth_alignment, transform_points)
from .basis import (COEFF_SLICES, N_COEFFS, FaceBasis, load_bfm, mouth_vertex_indices, save_bfm_mat,
                    split_coeffs, vertex_face_table)
from .fit import fit_3dmm, fit_video, read_landmark_sequence, read_landmarks, write_landmarks
from .synthetic import synthetic_face_basis, synthetic_talking_sequence
from .texture import fill_invisible, unwrap_texture, uv_raster

__all__ = ["COEFF_SLICES", "N_COEFFS", "FaceBasis", "load_bfm", "save_bfm_mat", "split_coeffs",
           "vertex_face_table", "mouth_vertex_indices", "synthetic_face_basis", "synthetic_talking_sequence",
           "fit_3dmm", "fit_video", "read_landmarks", "read_landmark_sequence", "write_landmarks",
           "five_points", "alignment_template", "estimate_alignment", "transform_points", "invert_alignment",
           "smooth_alignment", "crop_faces", "paste_faces", "uv_raster", "unwrap_texture", "fill_invisible"]
