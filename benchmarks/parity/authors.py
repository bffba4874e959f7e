"""Imports the authors' JAX MISA (github.com/sail-sg/MISA) from a local checkout, unmodified.

Their code is not part of this repository: clone it and point ``--authors-dir``
(or ``MISA_AUTHORS_DIR``) at the clone. Its modules are imported as they are;
the only help given is two aliases for functions that current JAX removed
(``jax.tree_multimap``, ``jax.tree_map``), set before the import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

AUTHORS_URL = "https://github.com/sail-sg/MISA"
ENV_VAR = "MISA_AUTHORS_DIR"


def authors_dir(path: str | Path | None) -> Path:
    """The checkout to import from: ``path``, else ``$MISA_AUTHORS_DIR``; exits with how to get one."""
    path = path or os.environ.get(ENV_VAR)
    if not path or not (Path(path) / "algos" / "misa.py").is_file():
        where = f" ({path} has no algos/misa.py)" if path else ""
        raise SystemExit(
            f"The authors' MISA code is needed{where}. Get it with\n"
            f"  git clone {AUTHORS_URL} /path/to/MISA\n"
            f"and pass --authors-dir /path/to/MISA (or set {ENV_VAR}). Its JAX "
            "environment: see benchmarks/parity/README.md."
        )
    return Path(path).resolve()


def import_authors(path: str | Path | None) -> SimpleNamespace:
    """The authors' learner, networks and RNG helpers, imported from their checkout.

    Returns:
        a namespace with ``MISA``, ``TanhGaussianPolicy``,
        ``FullyConnectedQFunction``, ``init_rng``, ``next_rng`` and ``root``.
    """
    root = authors_dir(path)
    import jax

    # Both were removed from JAX after the authors' release; same semantics.
    if not hasattr(jax, "tree_multimap"):
        jax.tree_multimap = jax.tree_util.tree_map
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree_util.tree_map
    try:  # their utilities import wandb for logging only, which the update never calls
        import wandb  # noqa: F401
    except ImportError:
        sys.modules["wandb"] = ModuleType("wandb")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from algos.misa import MISA
    from algos.model import FullyConnectedQFunction, TanhGaussianPolicy
    from utilities.jax_utils import init_rng, next_rng

    return SimpleNamespace(
        MISA=MISA,
        TanhGaussianPolicy=TanhGaussianPolicy,
        FullyConnectedQFunction=FullyConnectedQFunction,
        init_rng=init_rng,
        next_rng=next_rng,
        root=root,
    )
