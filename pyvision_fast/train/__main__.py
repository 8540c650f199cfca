"""``python -m pyvision_fast.train RECIPE ...`` and ``torchrun --nproc-per-node N -m pyvision_fast.train RECIPE ...``:
``pvf train`` with the same arguments."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
