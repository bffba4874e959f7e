"""Vectorised Hamiltonian Monte Carlo over batched tensors and TensorDicts.

The pieces follow BlackJAX's layout: a chain state (:func:`init_state`:
position, log density and its gradient in a TensorDict), an integrator
(:func:`leapfrog`), a pure transition kernel (:func:`hmc_step`, momentum
refresh + leapfrog + Metropolis test), a step-size rule kept apart from it
(:func:`adapt_step_size`) and a driver (:func:`hmc_sample`). All chains of all
batch elements advance together; the only Python loop is over transitions.
:func:`sample_tilted_tanh_normal` samples MISA's target
``p(a|s) ∝ pi(a|s) exp Q(s, a)`` for a tanh-Normal policy.

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
