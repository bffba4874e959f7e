"""Moved: the dataset generator is the tool ``tools/generate_dataset.py``.

Producing datasets is not part of the data layer. ``python -m
torchrl_misa.data.generate ARGS`` still runs the tool with the same flags,
with a :class:`DeprecationWarning`; it needs a source checkout (the tool is
not installed with the package).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

#: the tool, in the source tree
TOOL = Path(__file__).resolve().parents[2] / "tools" / "generate_dataset.py"


def main(argv: list[str] | None = None) -> None:
    """Runs ``tools/generate_dataset.py`` with ``argv`` (default: the command line)."""
    warnings.warn(
        "`python -m torchrl_misa.data.generate` is deprecated: run "
        f"`python {TOOL.relative_to(TOOL.parents[1])}` (same flags) instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    if not TOOL.is_file():
        raise SystemExit(
            f"The dataset generator is {TOOL}, which is not here: it lives in the "
            "source tree (tools/generate_dataset.py), not in the installed package. "
            "Run it from a checkout of the repository."
        )
    if str(TOOL.parent) not in sys.path:
        sys.path.insert(0, str(TOOL.parent))  # the tool imports its neighbours by name
    import generate_dataset

    generate_dataset.main(argv)


if __name__ == "__main__":
    main()
