"""Leaky integrate-and-fire neurons over time (SpikingJelly's multi-step ``LIFNode``, as SNN-delays uses it).

Per time step t, with v[-1] = 0 at the start of every sequence (``decay_input=False``, hard reset to 0):

  charge  H[t] = (1 - 1/tau) v[t-1] + X[t]         (the input is NOT divided by tau)
  fire    S[t] = 1 if H[t] - v_threshold >= 0       (ties spike)
  reset   v[t] = H[t] (1 - S[t])                    (detach_reset: S is a constant in the backward)

Backward: dS/dH is the ATan surrogate (alpha/2) / (1 + (pi/2 alpha (H - v_threshold))**2). tau is in time steps
(the reference's ``init_tau`` = (tau_ms + 1e-9) / time_step_ms). The reference's eval path computes the charge as
v - v/tau + X: the same maths, another rounding; ``eval_charge`` reproduces it. A readout neuron is the same
neuron with a threshold it never reaches (1e9): its membrane trace v is the network output.

Layout: time-major (T, ...) float arrays, any trailing shape; the state is carried by ``lax.scan``.
"""
from __future__ import annotations

import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

READOUT_THRESHOLD = 1e9  # the reference's non-spiking output neuron


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(z: jax.Array, alpha: float) -> jax.Array:
  """Heaviside step 1[z >= 0] in z's dtype, with the ATan surrogate derivative (alpha/2) / (1 + (pi/2 alpha z)**2)."""
  z = jnp.asarray(z)
  return (z >= 0).astype(z.dtype)


@spike.defjvp
def _spike_jvp(alpha, primals, tangents):
  (z,), (dz,) = primals, tangents
  surrogate = (alpha / 2) / (1 + (math.pi / 2 * alpha * z)**2)
  return spike(z, alpha), surrogate * dz


def lif_multistep(x: jax.Array, *, tau: float, v_threshold: float = 1.0, alpha: float = 5.0,
                  eval_charge: bool = False) -> tuple[jax.Array, jax.Array]:
  """Runs the neurons over time: x (T, ...) input currents -> (spikes, v_seq), both (T, ...) in x's dtype.

  v_seq is the post-reset membrane. ``eval_charge``: the reference's eval-mode charge formula (same values up to
  the last ulp). Raises ValueError for tau <= 1 (the reference asserts it) or x without a time axis.
  """
  if not tau > 1:
    raise ValueError(f"tau must be > 1 (time steps), got {tau!r}")
  if x.ndim < 1:
    raise ValueError(f"x must be time-major (T, ...), got a scalar of shape {x.shape}")
  decay = 1 - 1 / tau

  def step(v, x_t):
    h = v - v / tau + x_t if eval_charge else v * decay + x_t
    s = spike(h - v_threshold, alpha)
    v = h * (1 - lax.stop_gradient(s))
    return v, (s, v)

  _, (spikes, v_seq) = lax.scan(step, jnp.zeros_like(x[0]), x)
  return spikes, v_seq


class LIF(nnx.Module):
  """LIF neurons as a layer: (T, ...) currents -> (spikes, v_seq); no parameters.

  ``deterministic`` (set by ``module.eval()`` / ``module.train()``) selects the reference's eval-mode charge.
  """

  def __init__(self, tau: float, *, v_threshold: float = 1.0, alpha: float = 5.0, deterministic: bool = False):
    if not tau > 1:
      raise ValueError(f"tau must be > 1 (time steps), got {tau!r}")
    self.tau, self.v_threshold, self.alpha = tau, v_threshold, alpha
    self.deterministic = deterministic

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return lif_multistep(x, tau=self.tau, v_threshold=self.v_threshold, alpha=self.alpha,
                         eval_charge=self.deterministic)


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``snn_delays/lif``: spikes, v_seq and the input gradients of sum(spikes R) and sum(v_seq R2)."""
  config = meta["config"]
  if config.get("v_reset", 0.0) != 0.0 or config.get("decay_input", False) or not config.get("detach_reset", True):
    raise ValueError("only the SNN-delays neuron is supported: v_reset 0, decay_input False, detach_reset True")
  alpha = float(config["surrogate_function"].split("alpha=")[1].rstrip(")"))
  neuron = functools.partial(lif_multistep, tau=config["tau"], v_threshold=config["v_threshold"], alpha=alpha,
                             eval_charge=meta["mode"] == "eval")
  x = jnp.asarray(arrays["input/x"])
  spikes, v_seq = neuron(x)
  grad_spikes = jax.grad(lambda x: jnp.sum(neuron(x)[0] * arrays["input/R"]))(x)
  grad_v_seq = jax.grad(lambda x: jnp.sum(neuron(x)[1] * arrays["input/R2"]))(x)
  out = {"output/spikes": spikes, "output/v_seq": v_seq, "grad/x": grad_spikes, "grad/x_vseq": grad_v_seq}
  return {k: np.asarray(v) for k, v in out.items()}
