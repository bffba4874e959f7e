"""Vectorised Hamiltonian Monte Carlo over batched tensors and TensorDicts.

The pieces follow BlackJAX's layout: a chain state (:func:`init_state`:
position, log density and its gradient in a TensorDict), an integrator
(:func:`leapfrog`), a pure transition kernel built from them
(:func:`build_kernel`; :data:`hmc_step` is the default one: momentum refresh,
leapfrog, Metropolis test), a step-size adaptation as ``init``/``update``/
``final`` (:func:`simple_step_size_adaptation`, TFP's rule) and a driver
(:func:`hmc_sample`). All chains of all batch elements advance together; the
only Python loop is over transitions. Positions are tensors ``[*batch, d]`` or
TensorDicts of tensors. :func:`sample_tilted_tanh_normal` samples MISA's
target ``p(a|s) ∝ pi(a|s) exp Q(s, a)`` for a tanh-Normal policy.

Examples:
    >>> import torch
    >>> from torchrl_misa.mcmc import hmc_sample
    >>> g = torch.Generator().manual_seed(0)
    >>> log_prob = lambda x: -0.5 * ((x - 1.0) ** 2).sum(-1)  # N(1, I)
    >>> samples, info = hmc_sample(
    ...     log_prob, torch.zeros(500, 3), num_samples=20, num_burnin=10, generator=g
    ... )
    >>> samples.shape, info.batch_size
    (torch.Size([20, 500, 3]), torch.Size([500]))
    >>> bool((samples.mean((0, 1)) - 1).abs().max() < 0.1)
    True
"""

from .adaptation import (
    adapt_step_size,
    simple_step_size_adaptation,
    StepSizeAdaptation,
)
from .checks import check_counts
from .integrators import leapfrog
from .kernel import build_kernel, hmc_step, HMCKernel
from .positions import ravel_position
from .sampler import hmc_sample
from .state import init_state, value_and_grad
from .tilted import SAMPLER_MODES, sample_tilted_tanh_normal

__all__ = [
    "HMCKernel",
    "SAMPLER_MODES",
    "StepSizeAdaptation",
    "adapt_step_size",
    "build_kernel",
    "check_counts",
    "hmc_sample",
    "hmc_step",
    "init_state",
    "leapfrog",
    "ravel_position",
    "sample_tilted_tanh_normal",
    "simple_step_size_adaptation",
    "value_and_grad",
]
