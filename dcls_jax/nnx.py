"""DCLS convolution layers for Flax NNX, drop-in beside ``nnx.Conv``.

Each layer holds its parameters and a ``DclsSpec`` (``layer.py``), which does all shape checks, the reference
initialisers and the forward pass. Parameters (``nnx.Param``; torch layout, Kc = kernel_count):

  weight     (O, Cg, *dense_kernel_size, Kc)
  positions  (n, O, Cg, *dense_kernel_size, Kc)   n learnable axes, 0 = the axis centre
  sigmas     same as positions, versions ``gauss`` and ``max`` only (else None)
  bias       (O,), or None without use_bias

Data: x (N, *spatial, in_features) -> (N, *out_spatial, out_features); (N, C, *spatial) if channels_first.

=================  ==========================================  ===================
class              kernel (torch layout)                       reference class
=================  ==========================================  ===================
DclsConv           (O, Cg, d_0, ..., d_{n-1}), n = 1, 2, 3     Dcls1d/2d/3d
PartialDclsConv    (O, Cg, *dense_kernel_size, d)              Dcls2_1d, Dcls3_1d
FlatDclsConv       (O, Cg, d, 1) or (O, Cg, 1, d)              Dcls2dK1d
=================  ==========================================  ===================

Sharing: pass one ``nnx.Param`` as ``positions=`` (and ``sigmas=``) to several layers; they hold the same
Variable, so ``nnx.state`` has it once and its gradient sums over the layers.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from dcls_jax import layer

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class _DclsLayer(nnx.Module):
  """The three DCLS layers' shared constructor and forward pass.

  Args (keyword arguments of every DCLS layer):
    strides, padding, padding_mode, feature_group_count, use_bias, version, construction, conv_algorithm,
      channels_first: as ``layer.make_spec`` (padding: 'SAME', 'VALID', ints or (lo, hi) pairs; padding_mode
      zeros | reflect | replicate | circular; version v0 | v1 | max | gauss).
    dtype: computation dtype (x, weight and bias are promoted to it; the kernel is built in >= float32).
    param_dtype: dtype of the parameters.
    precision: of the convolution.
    weight_init, bias_init, positions_init, sigmas_init: ``init(key, shape, dtype)``; default: the reference's.
    positions, sigmas: an existing ``nnx.Param`` to share instead of creating one.
    rngs: ``rngs.params()`` keys the initialisers.
  """

  def __init__(self,
               in_features: int,
               out_features: int,
               kernel_count: int,
               dilated_kernel_size,
               *,
               kind: str,
               dense_kernel_size=(),
               flat_axis: int = 0,
               strides=1,
               padding: layer.Padding = "SAME",
               padding_mode: str = "zeros",
               feature_group_count: int = 1,
               use_bias: bool = True,
               version: str = "gauss",
               construction: str = "auto",
               conv_algorithm: str = "auto",
               channels_first: bool = False,
               dtype: Optional[Any] = None,
               param_dtype: Any = jnp.float32,
               precision: Any = None,
               weight_init: Optional[Initializer] = None,
               bias_init: Optional[Initializer] = None,
               positions_init: Optional[Initializer] = None,
               sigmas_init: Optional[Initializer] = None,
               positions: Optional[nnx.Param] = None,
               sigmas: Optional[nnx.Param] = None,
               rngs: nnx.Rngs):
    spec = layer.make_spec(
        in_features, out_features, kernel_count, dilated_kernel_size, kind=kind, dense_kernel_size=dense_kernel_size,
        flat_axis=flat_axis, strides=strides, padding=padding, padding_mode=padding_mode,
        feature_group_count=feature_group_count, use_bias=use_bias, version=version, construction=construction,
        conv_algorithm=conv_algorithm, channels_first=channels_first)
    if sigmas is not None and not spec.has_sigmas:
      raise ValueError(f"sigmas given, but version {version!r} has none")

    def param(name, shared, init, shape):
      if shared is not None:
        if not isinstance(shared, nnx.Param):
          raise TypeError(f"{name} must be an nnx.Param to share, got {type(shared).__name__}")
        return shared
      return nnx.Param((init or spec.initializer(name))(rngs.params(), shape, param_dtype))

    self.spec = spec
    self.dtype = dtype
    self.precision = precision
    self.weight = param("weight", None, weight_init, spec.weight_shape)
    self.positions = param("positions", positions, positions_init, spec.positions_shape)
    self.sigmas = (param("sigmas", sigmas, sigmas_init, spec.positions_shape) if spec.has_sigmas
                   else nnx.data(None))
    self.bias = param("bias", None, bias_init, (out_features,)) if use_bias else nnx.data(None)
    spec.check_params(self.weight[...], self.positions[...], self._sigmas())

  def _sigmas(self) -> Optional[jax.Array]:
    return None if self.sigmas is None else self.sigmas[...]

  def kernel(self) -> jax.Array:
    """The dense kernel, torch layout (O, Cg, *kernel_spatial_shape), in the parameters' dtype."""
    return self.spec.kernel(self.weight[...], self.positions[...], self._sigmas())

  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, *spatial, in_features) -> (N, *out_spatial, out_features), or channels first."""
    bias = None if self.bias is None else self.bias[...]
    # Positions and sigmas are coordinates, not operands: kept at their precision (the kernel is built in f32).
    x, weight, bias = dtypes.promote_dtype((x, self.weight[...], bias), dtype=self.dtype)
    return self.spec.apply(x, weight, self.positions[...], self._sigmas(), bias, precision=self.precision)


class DclsConv(_DclsLayer):
  """DCLS convolution with 1, 2 or 3 learnable kernel axes (reference Dcls1d / Dcls2d / Dcls3d).

  Every (out, in) channel pair has ``kernel_count`` weights at learnable real positions, interpolated onto a
  dense kernel of shape ``dilated_kernel_size`` (a tuple, one entry per spatial axis; an int means 1-D, as
  ``nnx.Conv``'s kernel_size). Keyword arguments: see ``_DclsLayer``.

  Example::

    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from dcls_jax.nnx import DclsConv
    >>> conv = DclsConv(8, 8, kernel_count=4, dilated_kernel_size=(7, 7), feature_group_count=8,
    ...                 rngs=nnx.Rngs(0))
    >>> conv.weight.shape, conv.positions.shape, conv.sigmas.shape
    ((8, 1, 4), (2, 8, 1, 4), (2, 8, 1, 4))
    >>> conv(jnp.ones((2, 16, 16, 8))).shape
    (2, 16, 16, 8)
    >>> conv.kernel().shape  # torch layout (O, Cg, *dilated_kernel_size)
    (8, 1, 7, 7)
  """

  def __init__(self, in_features: int, out_features: int, kernel_count: int, dilated_kernel_size, **kwargs):
    if isinstance(dilated_kernel_size, int):
      dilated_kernel_size = (dilated_kernel_size,)
    super().__init__(in_features, out_features, kernel_count, dilated_kernel_size, kind="full", **kwargs)


class PartialDclsConv(_DclsLayer):
  """DCLS learning positions along the last spatial axis only, with dense taps along the others.

  ``dense_kernel_size``: one entry (2-D conv, reference Dcls2_1d) or two (3-D conv, reference Dcls3_1d);
  ``dilated_kernel_size``: the extent d of the learnable last axis. Keyword arguments: see ``_DclsLayer``.
  """

  def __init__(self, in_features: int, out_features: int, kernel_count: int, dense_kernel_size,
               dilated_kernel_size: int, **kwargs):
    super().__init__(in_features, out_features, kernel_count, dilated_kernel_size, kind="partial",
                     dense_kernel_size=dense_kernel_size, **kwargs)


class FlatDclsConv(_DclsLayer):
  """A 2-D convolution whose kernel is one learnable DCLS axis of extent d (reference Dcls2dK1d).

  ``flat_axis`` 0 lays it along H (kernel (O, Cg, d, 1)), 1 along W ((O, Cg, 1, d)). The version defaults to
  ``v1``, as in the reference. Keyword arguments: see ``_DclsLayer``.
  """

  def __init__(self, in_features: int, out_features: int, kernel_count: int, dilated_kernel_size: int, *,
               flat_axis: int = 0, version: str = "v1", **kwargs):
    super().__init__(in_features, out_features, kernel_count, dilated_kernel_size, kind="flat",
                     flat_axis=flat_axis, version=version, **kwargs)
