"""Build the API reference of pyvision_fast from its docstrings with pdoc, failing on any warning.

    python docs/build_api.py [OUTPUT_DIR]          # default build/docs; `make docs` runs this

Every public module of the installed package is documented: ``pyvision_fast`` and each module below it whose
dotted name has no component starting with ``_`` (so ``pyvision_fast.ops.pointcloud`` is in, ``_backend``,
``_ext`` and ``__main__`` are out; what they export publicly appears where it is re-exported). pdoc alone
would follow only the submodules a package lists in its ``__all__``, so the modules are listed here.

Warnings are recorded while pdoc imports and renders the modules (pdoc reports docstring and annotation
problems as Python warnings). Any warning that names no module of ``NOT_CHECKED`` is printed and the exit
status is 1; the output is written either way so that the problem can be looked at. One pdoc false positive
is not counted (``_known_false_positive``).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
import warnings
from pathlib import Path

# Module prefixes whose warnings are printed but do not fail the build. Empty: every module builds without a
# warning today. A module other engineers are still writing may be added here with a note saying why and until
# when, instead of editing it from here.
NOT_CHECKED: tuple[str, ...] = ()


def public_modules(package: str = "pyvision_fast") -> list[str]:
    """Dotted names of ``package`` and its public submodules, sorted."""
    root = importlib.import_module(package)
    names = {package}
    for info in pkgutil.walk_packages(root.__path__, prefix=package + ".", onerror=lambda name: None):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.add(info.name)
    return sorted(names)


def _known_false_positive(message: str) -> bool:
    """pdoc's "Error parsing type annotation ForwardRef(...) for <module>.<Class>.__init__" where <Class> is a
    ``typing.NamedTuple``: the ``__new__`` that NamedTuple generates evaluates postponed annotations (``from
    __future__ import annotations``) in the ``collections`` namespace instead of the class's module, so no
    name the module imports resolves there. The docstring is fine and pdoc shows the annotation as written."""
    match = re.match(r"Error parsing type annotation .* for ([\w.]+)\.__init__\.", message)
    if match is None:
        return False
    module_name, _, class_name = match.group(1).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def build(output: Path, modules: list[str] | None = None) -> list[str]:
    """Render ``modules`` (default: ``public_modules()``) into ``output``; returns the warnings that count."""
    import pdoc.doc
    import pdoc.render

    modules = public_modules() if modules is None else modules
    pdoc.render.configure(docformat="google", show_source=False, search=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # pdoc.pdoc() would walk each package's submodules again (and warn that they are listed twice);
        # the same steps, once per listed module:
        docs = {name: pdoc.doc.Module.from_name(name) for name in modules}
        for name, module in docs.items():
            path = output / f"{name.replace('.', '/')}.html"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(pdoc.render.html_module(module, docs), encoding="utf-8")
        index = pdoc.render.html_index(docs)
        if index:
            (output / "index.html").write_text(index, encoding="utf-8")
        search = pdoc.render.search_index(docs)
        if search:
            (output / "search.js").write_text(search, encoding="utf-8")
    failures = []
    for w in caught:
        message = str(w.message)
        if _known_false_positive(message):
            continue
        line = f"{w.category.__name__}: {message}"
        if any(prefix in message for prefix in NOT_CHECKED):
            print(f"(not checked) {line}", file=sys.stderr)
            continue
        failures.append(line)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="build/docs", type=Path)
    args = parser.parse_args(argv)
    failures = build(args.output)
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"API reference: {len(failures)} warning(s); output in {args.output}", file=sys.stderr)
        return 1
    print(f"API reference written to {args.output}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
