"""What the ports of PyTorch references share: layers and initialisers with PyTorch semantics, argument checks."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from dcls_jax import conv as conv_lib

Initializer = Callable[..., jax.Array]


def torch_uniform(fan_in: int) -> Initializer:
  """PyTorch's default init of a Conv/Linear weight or bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
  """``torch.nn.Linear`` as an ``nnx.Linear`` (kernel (in, out), bias), with PyTorch's default init."""
  init = torch_uniform(in_features)
  return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


def check_positive_int(value, name: str) -> None:
  """Raises a ValueError naming ``name`` unless ``value`` is an int >= 1."""
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class BatchNorm(nnx.Module):
  """torch ``BatchNorm1d/2d`` over the last axis: x (..., C) -> same shape, statistics over all other axes.

  Train: normalise with the biased batch variance; running mean/var <- (1 - momentum) old + momentum new, the
  variance UNBIASED (n = the number of rows, over all devices with ``axis_name``), and ``num_batches_tracked`` + 1.
  Eval (``use_running_average``, set by ``model.eval()``): the running statistics. ``momentum`` is torch's (the
  weight of the new statistics), not Flax's; Flax's BatchNorm also updates the running variance with the biased
  estimate, which is why the ports use this one.

  Variables: ``scale``, ``bias`` (C,) Params; ``mean``, ``var`` (C,) and ``num_batches_tracked`` () int32
  BatchStats (torch's weight, bias, running_mean, running_var, num_batches_tracked).
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
               axis_name: Optional[str] = None, use_running_average: bool = False, param_dtype: Any = jnp.float32):
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
      raise ValueError(f"num_features must be an int >= 1, got {num_features!r}")
    if not 0 <= momentum <= 1:
      raise ValueError(f"momentum must be in [0, 1] (torch convention), got {momentum!r}")
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
    self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))
    self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.momentum, self.epsilon, self.axis_name = momentum, epsilon, axis_name
    self.use_running_average = use_running_average

  def _batch_statistics(self, rows: jax.Array) -> tuple[jax.Array, jax.Array, int]:
    """(mean, biased variance, number of rows) over rows (n, C), across devices with ``axis_name``."""
    mean = jnp.mean(rows, axis=0)
    if self.axis_name is not None:
      mean = lax.pmean(mean, self.axis_name)
    var = jnp.mean(jnp.square(rows - mean), axis=0)
    count = rows.shape[0]
    if self.axis_name is not None:
      var = lax.pmean(var, self.axis_name)
      count = count * lax.psum(1, self.axis_name)
    return mean, var, count

  def __call__(self, x: jax.Array) -> jax.Array:
    features = self.scale.shape[0]
    if x.shape[-1] != features:
      raise ValueError(f"x must have {features} features in its last axis, got shape {x.shape}")
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      rows = x.reshape(-1, features)
      if rows.shape[0] < 2:
        raise ValueError(f"x must hold more than one value per channel in train mode, got shape {x.shape}")
      mean, var, count = self._batch_statistics(rows)
      m = self.momentum
      self.mean[...] = (1 - m) * self.mean[...] + m * mean.astype(self.mean.dtype)
      self.var[...] = (1 - m) * self.var[...] + m * (var * count / (count - 1)).astype(self.var.dtype)
      self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
    return (x - mean) / jnp.sqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


class Conv(nnx.Conv):
  """``nnx.Conv`` (the same parameters: kernel (*kernel_size, in // groups, out), bias) computed by
  ``dcls_jax.conv.conv``, whose ``conv_algorithm`` 'auto' takes the FFT where XLA:CPU's own convolution is slow:
  large kernels, and grouped convolutions that are neither dense nor depthwise (100x slower there in fwd+bwd).
  Strides and paddings as ``nnx.Conv``'s (ints, (lo, hi) pairs, 'SAME', 'VALID'); no kernel dilation."""

  def __init__(self, *args, conv_algorithm: str = "auto", **kwargs):
    super().__init__(*args, **kwargs)
    if any(d != 1 for d in jax.tree.leaves(self.kernel_dilation)):
      raise ValueError(f"kernel_dilation={self.kernel_dilation!r}: this conv has none (expected 1)")
    self.conv_algorithm = conv_algorithm

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = jnp.moveaxis(self.kernel[...], (-1, -2), (0, 1))  # (*k, I, O) -> torch layout (O, I, *k)
    y = conv_lib.conv(x, kernel, strides=self.strides, padding=self.padding,
                      feature_group_count=self.feature_group_count, algorithm=self.conv_algorithm,
                      precision=self.precision)
    return y if self.bias is None else y + self.bias[...]
