"""Records the authors' MISA losses at fixed weights and batch: ``test/fixtures/misa_authors_losses.npz``.

Runs the authors' own JAX training step (github.com/sail-sg/MISA, imported
from ``--authors-dir``) on a small fixed setting: observations of size 3,
actions of size 2, 16-16 networks, a batch of 32, k = 8 policy samples. The
weights are their initialisation with every layer redrawn larger (so that the
critics' values differ across actions by O(1), some log-stds reach the clip
at 2, and the critics' targets differ from the critics), the temperature is
``exp(-0.4)`` and the log-std is ``1.3 * raw - 0.6`` (their trainable
multiplier and offset moved off their initial 1 and -1). For each of
``--draws`` random keys the step's losses are evaluated without applying the
update: the policy loss, the sum of the two critics' losses and the
temperature loss, in their MISA-biased mode (``unbiased_grad=False``), and the
policy loss with their MCMC correction (``unbiased_grad=True``). The values
are those their step differentiates (their logged ``policy_loss`` leaves the
correction out), read by wrapping their ``value_and_multi_grad``.
``test/test_parity_conformance.py`` loads the weights into torch networks and
compares ``MISALoss`` against these draws, with no JAX::

    /work/jaxenv/bin/python benchmarks/parity/make_fixture.py --authors-dir ../MISA
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from authors import import_authors  # noqa: E402

REPO = HERE.parents[1]
OUT = REPO / "test" / "fixtures" / "misa_authors_losses.npz"
SETTING = {
    "obs_dim": 3,
    "action_dim": 2,
    "hidden": "16-16",
    "batch_size": 32,
    "k": 8,
    "min_q_weight": 5.0,
    "bc_weight": 0.5,
    "unbiased_weight": 0.1,
    "discount": 0.99,
    "target_entropy": -2.0,
    "num_burnin": 5,
    "num_leapfrog": 2,
    "step_size": 1,
    "log_alpha": -0.4,
    "log_std_multiplier": 1.3,
    "log_std_offset": -0.6,
}


def _redraw(params, rng, last_gain: float):
    """Every Dense layer redrawn: He-normal hidden kernels, ``last_gain / sqrt(fan_in)`` last kernel."""
    import numpy as np

    dense = sorted(k for k in params if k.startswith("Dense_"))
    out = dict(params)
    for name in dense:
        kernel = np.asarray(params[name]["kernel"])
        fan_in = kernel.shape[0]
        gain = last_gain if name == dense[-1] else np.sqrt(2.0)
        out[name] = {
            "kernel": (
                gain / np.sqrt(fan_in) * rng.standard_normal(kernel.shape)
            ).astype("f4"),
            "bias": (0.1 * rng.standard_normal(params[name]["bias"].shape)).astype(
                "f4"
            ),
        }
    return out


def _expose_losses(misa_module) -> None:
    """Makes the step's metrics carry the four losses it differentiates, as ``loss_<key>``.

    Their step differentiates ``(policy, qf1, qf2, log_alpha)`` losses but logs
    the policy loss before the MCMC correction is added; this wraps the
    gradient helper their module calls, so the values come out unchanged.
    """
    original = misa_module.value_and_multi_grad

    def value_and_multi_grad(fun, n_outputs, argnums=0, has_aux=False):
        inner = original(fun, n_outputs, argnums=argnums, has_aux=has_aux)

        def wrapped(*args, **kwargs):
            (values, aux), grads = inner(*args, **kwargs)
            aux = dict(aux)
            aux["policy_loss"] = values[0]  # the policy's loss as differentiated
            aux["qf1_loss"], aux["qf2_loss"] = values[1], values[2]
            aux["alpha_loss"] = values[3]
            return (values, aux), grads

        return wrapped

    misa_module.value_and_multi_grad = value_and_multi_grad


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-dir", help="checkout of github.com/sail-sg/MISA")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    authors = import_authors(args.authors_dir)
    import algos.misa

    _expose_losses(algos.misa)
    import jax
    import jax.numpy as jnp
    import numpy as np

    s = SETTING
    authors.init_rng(0)
    policy = authors.TanhGaussianPolicy(
        s["obs_dim"], s["action_dim"], s["hidden"], False, 1.0, -1.0
    )
    qf = authors.FullyConnectedQFunction(
        s["obs_dim"], s["action_dim"], s["hidden"], False, False, "elu"
    )
    common = {
        "n_actions": s["k"],
        "min_q_weight": s["min_q_weight"],
        "bc_weight_misa": s["bc_weight"],
        "unbiased_weight": s["unbiased_weight"],
        "discount": s["discount"],
        "target_entropy": s["target_entropy"],
        "mcmc_burnin_steps": s["num_burnin"],
        "mcmc_num_leapfrog_steps": s["num_leapfrog"],
        "mcmc_step_size": s["step_size"],
    }
    biased = authors.MISA({**common, "unbiased_grad": False}, policy, qf)
    assert biased.model_keys == ("policy", "qf1", "qf2", "log_alpha"), biased.model_keys
    unbiased = authors.MISA({**common, "unbiased_grad": True}, policy, qf)

    rng = np.random.default_rng(1)
    states = dict(biased.train_states)
    pol = dict(states["policy"].params["params"])
    pol["base_network"] = _redraw(pol["base_network"], rng, last_gain=1.0)
    pol["log_std_multiplier_module"] = {"value": jnp.float32(s["log_std_multiplier"])}
    pol["log_std_offset_module"] = {"value": jnp.float32(s["log_std_offset"])}
    states["policy"] = states["policy"].replace(params={"params": pol})
    states["log_alpha"] = states["log_alpha"].replace(
        params={"params": {"value": jnp.float32(s["log_alpha"])}}
    )
    targets = {}
    for q in ("qf1", "qf2"):
        net = _redraw(
            states[q].params["params"]["FullyConnectedNetwork_0"], rng, last_gain=2.0
        )
        states[q] = states[q].replace(
            params={"params": {"FullyConnectedNetwork_0": net}}
        )
        targets[q] = {
            "params": {
                "FullyConnectedNetwork_0": {
                    layer: {
                        k: (v + 0.05 * rng.standard_normal(v.shape)).astype("f4")
                        for k, v in weights.items()
                    }
                    for layer, weights in net.items()
                }
            }
        }

    b = s["batch_size"]
    batch = {
        "observations": rng.standard_normal((b, s["obs_dim"])).astype("f4"),
        "actions": rng.uniform(-0.99, 0.99, (b, s["action_dim"])).astype("f4"),
        "rewards": rng.standard_normal(b).astype("f4"),
        "next_observations": rng.standard_normal((b, s["obs_dim"])).astype("f4"),
        "dones": (rng.uniform(size=b) < 0.25).astype("f4"),
    }
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}

    draws = {"critic": [], "actor": [], "alpha": [], "actor_unbiased": []}
    for i in range(args.draws):
        key = jax.random.PRNGKey(10_000 + i)
        _, _, m = biased._train_step(states, targets, key, jbatch, False)
        draws["critic"].append(float(m["qf1_loss"]) + float(m["qf2_loss"]))
        draws["actor"].append(float(m["policy_loss"]))
        draws["alpha"].append(float(m["alpha_loss"]))
        _, _, m = unbiased._train_step(states, targets, key, jbatch, False)
        draws["actor_unbiased"].append(float(m["policy_loss"]))

    arrays = {f"setting/{k}": np.asarray(v) for k, v in s.items()}
    arrays.update({f"batch/{k}": v for k, v in batch.items()})
    arrays.update({f"draws/{k}": np.asarray(v) for k, v in draws.items()})
    for name, layer in pol["base_network"].items():
        for k, v in layer.items():
            arrays[f"policy/{name}/{k}"] = np.asarray(v)
    for q in ("qf1", "qf2"):
        for prefix, tree in ((q, states[q].params), (f"target_{q}", targets[q])):
            for name, layer in tree["params"]["FullyConnectedNetwork_0"].items():
                for k, v in layer.items():
                    arrays[f"{prefix}/{name}/{k}"] = np.asarray(v)
    commit = subprocess.run(
        ["git", "-C", str(authors.root), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    arrays["meta/authors_commit"] = np.asarray(commit)
    arrays["meta/jax"] = np.asarray(jax.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    for k, v in draws.items():
        v = np.asarray(v)
        print(f"{k}: {v.mean():.4f} ± {v.std(ddof=1) / np.sqrt(len(v)):.4f} (SE)")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
