"""Vectorised Hamiltonian Monte Carlo over batched tensors and TensorDicts."""

from .adaptation import adapt_step_size
from .integrators import leapfrog
from .kernel import hmc_step
from .sampler import hmc_sample
from .state import init_state, value_and_grad
from .tilted import sample_tilted_tanh_normal

__all__ = [
    "adapt_step_size",
    "hmc_sample",
    "hmc_step",
    "init_state",
    "leapfrog",
    "sample_tilted_tanh_normal",
    "value_and_grad",
]
