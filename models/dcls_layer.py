"""Arch ``dcls_layer``: one reference DCLS layer (``dcls==0.1.1``) run through dcls-jax.

The layer runs in the reference's channels-first layout, with the direct convolution (the FFT path is exact
only to its own round-off; see ``dcls_jax.conv``), from parameters imported by ``dcls_jax.torch_io``.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dcls_jax import torch_io


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Returns output/y, output/kernel and grad/* of loss = sum(y * R), in the reference's layouts."""
  class_name, kwargs = meta["config"]["class"], meta["config"]["kwargs"]
  dtype = jnp.dtype(meta.get("dtype", "float32"))
  spec = torch_io.spec_from_reference(class_name, kwargs, channels_first=True, conv_algorithm="direct")
  state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
  params = {k: jnp.asarray(v, dtype) for k, v in torch_io.params_from_reference(class_name, kwargs, state).items()}
  x, cotangent = jnp.asarray(arrays["input/x"], dtype), jnp.asarray(arrays["input/R"], dtype)

  def loss(params):
    y = spec.apply(x, **params)
    return jnp.sum(y * cotangent), y

  (_, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
  kernel = spec.kernel(params["weight"], params["positions"], params.get("sigmas"))
  out = {"output/y": y, "output/kernel": kernel}
  out.update({f"grad/{k}": v for k, v in torch_io.gradients_to_reference(class_name, kwargs, grads).items()})
  return {k: np.asarray(v) for k, v in out.items()}
