"""The README's usage examples run as written (with the shapes their comments state)."""
import re
from pathlib import Path

import torch


def test_readme_examples_run():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    scope: dict = {}
    exec(compile("\n".join(blocks), "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["tokens"].shape == (2, 392, 768)
    assert scope["feat"].shape == (2, 32, 112, 224)
    assert scope["blurred"].shape == (2, 3, 3, 224, 448)
    scope["blurred"].mean().backward()
    assert scope["sigma"].grad is not None and torch.isfinite(scope["sigma"].grad).all()
