"""Export a model built on pyvision_fast's layers to ONNX and run it in ONNX Runtime.

    python examples/export_onnx_runtime.py [-o sphere360.onnx]            # the 360-degree model at 256 x 512
    python examples/export_onnx_runtime.py --small                        # at 64 x 128 (seconds on a CPU)

The model is ``Sphere360Net`` from ``sphere_360_model.py`` beside this script (spherical convolutions, a sphere
patch embedding and a transformer layer). ``pyvision_fast.export.to_onnx`` exports it with the library's
translations, so the graph holds standard ONNX operators only (the fixed sampling tables become constants):
it runs the ONNX checker, lists any node TensorRT would need a plugin for, runs ONNX Runtime on the example
input and records the largest difference from PyTorch. The script then loads the file in an ONNX Runtime
session itself, as a deployment would, on a batch size other than the export's (the batch dimension is
dynamic), and prints ``largest |ONNX Runtime - PyTorch|: ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pyvision_fast.export import to_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sphere_360_model import Sphere360Net, astronaut_frame  # noqa: E402  (the example beside this one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=os.environ.get("PVF_EXAMPLES_SMALL") == "1",
                        help="a 64 x 128 frame, for a quick check (also PVF_EXAMPLES_SMALL=1)")
    parser.add_argument("-o", "--output", type=Path, help="where to write the .onnx file (default: a temporary "
                        "folder, removed afterwards)")
    args = parser.parse_args()
    torch.manual_seed(0)
    height = 64 if args.small else 256
    model = Sphere360Net(height).eval()
    frame = astronaut_frame(height)
    example = torch.cat([frame, torch.rand(1, 3, height, 2 * height)])  # batch 2: the batch stays symbolic

    with tempfile.TemporaryDirectory() as tmp:
        path = args.output or Path(tmp) / "sphere360.onnx"
        report = to_onnx(model, (example,), path)
        print(report)

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch = torch.cat([frame, torch.rand(2, 3, height, 2 * height)])  # batch 3, not the export's 2
        feed = {session.get_inputs()[0].name: batch.numpy()}
        onnx_outputs = session.run(None, feed)
        with torch.no_grad():
            torch_outputs = model(batch)
        diffs = [float(np.abs(o - t.numpy()).max()) for o, t in zip(onnx_outputs, torch_outputs)]
        names = [o.name for o in session.get_outputs()]
        print("outputs: " + ", ".join(f"{n} {o.shape}" for n, o in zip(names, onnx_outputs)))
        print(f"TensorRT plugins needed: {len(report.tensorrt_unsupported)}")
        print(f"largest |ONNX Runtime - PyTorch|: {max(diffs):.3g}")


if __name__ == "__main__":
    main()
