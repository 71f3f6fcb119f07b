"""Strip outputs, execution counts and run metadata from notebooks before they are committed:
`python scripts/strip_notebooks.py [NOTEBOOK ...]` (default: every notebook under notebooks/)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUN_METADATA = ("execution", "collapsed", "scrolled")


def strip(notebook: nbformat.NotebookNode) -> bool:
    """Remove outputs, execution counts and per-run cell metadata in place; True when anything changed."""
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
        for key in RUN_METADATA:
            if key in cell.get("metadata", {}):
                del cell.metadata[key]
                changed = True
    if "widgets" in notebook.metadata:
        del notebook.metadata["widgets"]
        changed = True
    return changed


def main(paths: list[str]) -> int:
    files = [Path(p) for p in paths] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in files:
        if path.suffix != ".ipynb" or not path.is_file():
            print(f"error: {path}: not a notebook file", file=sys.stderr)
            return 2
        notebook = nbformat.read(path, as_version=4)
        if strip(notebook):
            nbformat.write(notebook, path)
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
