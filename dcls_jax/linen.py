"""DCLS convolution layers for Flax Linen: the NNX layers of ``dcls_jax.nnx`` as ``nn.Module`` dataclasses.

Same classes, fields and defaults as ``dcls_jax.nnx`` (without ``rngs``); ``spec`` (a ``DclsSpec``, built and
validated at construction) does the checks, initialisers and forward pass. Params (torch layout):

  weight     (O, Cg, *dense_kernel_size, Kc)
  positions  (n, O, Cg, *dense_kernel_size, Kc)
  sigmas     same as positions, versions ``gauss`` and ``max`` only
  bias       (O,), if use_bias

Data: x (N, *spatial, in_features) -> (N, *out_spatial, out_features); (N, C, *spatial) if channels_first.

Sharing: ``layer(x, positions=p, sigmas=s)`` uses the given arrays (e.g. created once by the parent with
``self.param``) instead of the layer's own, and the layer creates no param of that name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from dcls_jax import layer

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class _DclsLayer(nn.Module):
  """Fields and forward pass shared by the DCLS layers; fields as the keyword arguments of ``dcls_jax.nnx``."""
  in_features: int
  out_features: int
  kernel_count: int
  _: dataclasses.KW_ONLY
  strides: Union[int, Sequence[int]] = 1
  padding: layer.Padding = "SAME"
  padding_mode: str = "zeros"
  feature_group_count: int = 1
  use_bias: bool = True
  version: str = "gauss"
  construction: str = "auto"
  conv_algorithm: str = "auto"
  channels_first: bool = False
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  weight_init: Optional[Initializer] = None
  bias_init: Optional[Initializer] = None
  positions_init: Optional[Initializer] = None
  sigmas_init: Optional[Initializer] = None

  def __post_init__(self):
    self.spec  # validates the fields (ValueError naming the bad one)
    super().__post_init__()

  def _kind_args(self) -> dict[str, Any]:
    """The ``make_spec`` arguments of this kind of layer."""
    raise NotImplementedError

  @property
  def spec(self) -> layer.DclsSpec:
    return layer.make_spec(
        self.in_features, self.out_features, self.kernel_count, strides=self.strides, padding=self.padding,
        padding_mode=self.padding_mode, feature_group_count=self.feature_group_count, use_bias=self.use_bias,
        version=self.version, construction=self.construction, conv_algorithm=self.conv_algorithm,
        channels_first=self.channels_first, **self._kind_args())

  @nn.compact
  def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None,
               sigmas: Optional[jax.Array] = None) -> jax.Array:
    """(N, *spatial, in_features) -> (N, *out_spatial, out_features), or channels first.

    ``positions``, ``sigmas``: shared arrays used instead of (and without creating) the layer's own params.
    """
    spec = self.spec
    if sigmas is not None and not spec.has_sigmas:
      raise ValueError(f"sigmas given, but version {self.version!r} has none")

    def param(name, init, shape):
      return self.param(name, init or spec.initializer(name), shape, self.param_dtype)

    weight = param("weight", self.weight_init, spec.weight_shape)
    if positions is None:
      positions = param("positions", self.positions_init, spec.positions_shape)
    if spec.has_sigmas and sigmas is None:
      sigmas = param("sigmas", self.sigmas_init, spec.positions_shape)
    bias = param("bias", self.bias_init, (self.out_features,)) if self.use_bias else None
    # Positions and sigmas are coordinates, not operands: kept at their precision (the kernel is built in f32).
    x, weight, bias = nn.dtypes.promote_dtype(x, weight, bias, dtype=self.dtype)
    return spec.apply(x, weight, positions, sigmas, bias, precision=self.precision)


class DclsConv(_DclsLayer):
  """DCLS convolution with 1, 2 or 3 learnable kernel axes (reference Dcls1d / Dcls2d / Dcls3d).

  ``dilated_kernel_size``: a tuple, one entry per spatial axis (an int means 1-D, as ``nn.Conv``'s kernel_size).
  """
  dilated_kernel_size: Union[int, Sequence[int]]

  def _kind_args(self):
    size = self.dilated_kernel_size
    return dict(kind="full", dilated_kernel_size=(size,) if isinstance(size, int) else size)


class PartialDclsConv(_DclsLayer):
  """Learnable positions along the last spatial axis, dense taps along the others (Dcls2_1d, Dcls3_1d)."""
  dense_kernel_size: Union[int, Sequence[int]]
  dilated_kernel_size: int

  def _kind_args(self):
    return dict(kind="partial", dense_kernel_size=self.dense_kernel_size,
                dilated_kernel_size=self.dilated_kernel_size)


class FlatDclsConv(_DclsLayer):
  """A 2-D convolution whose kernel is one learnable axis, along H (flat_axis 0) or W (1) (Dcls2dK1d)."""
  dilated_kernel_size: int
  flat_axis: int = dataclasses.field(default=0, kw_only=True)
  version: str = dataclasses.field(default="v1", kw_only=True)

  def _kind_args(self):
    return dict(kind="flat", dilated_kernel_size=self.dilated_kernel_size, flat_axis=self.flat_axis)
