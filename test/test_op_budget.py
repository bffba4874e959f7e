"""Kernel launches per update under a budget (``benchmarks/op_count.py``).

On a GPU the eager update's time follows its number of kernel launches. The
budgets are the counts measured when they were set (small setting, one agent:
2931 launching ops per update, 157 per HMC transition) with 10% of room: a
change that adds launches to every transition, or doubles them, goes red.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "op_count.py"
LAUNCHES_PER_UPDATE = 3220
LAUNCHES_PER_TRANSITION = 173


def _op_count():
    spec = importlib.util.spec_from_file_location("op_count", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["op_count"] = module
    spec.loader.exec_module(module)
    return module


def test_counter_counts_launches_not_views():
    op_count = _op_count()
    x = torch.randn(4, 3)
    with op_count.OpCounter() as counter:
        y = x.t().unsqueeze(0).detach()  # views and detach: no kernel
        z = (y * 2).sum()  # two kernels
        del z
    assert counter.launching == 2
    assert counter.ops >= 5


def test_misa_update_launches_within_budget():
    op_count = _op_count()
    row = op_count.count_eager("misa", "small", 1, op_count.SHAPES.burnin)
    per_transition = op_count.per_transition(row, "small", 1)
    assert row["launching_ops"] <= LAUNCHES_PER_UPDATE, row
    assert (
        per_transition["launching_ops_per_hmc_transition"] <= LAUNCHES_PER_TRANSITION
    ), per_transition
    # the chain owns most of the update: a transition is 2 critic-and-gradient
    # evaluations; the 15 transitions and the first evaluation together are
    # more than half the launches
    assert 15 * per_transition["launching_ops_per_hmc_transition"] > (
        row["launching_ops"] / 2
    )
