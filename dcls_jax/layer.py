"""What a DCLS convolution layer is, independent of the Flax API that holds its parameters.

``DclsSpec`` validates the constructor arguments once, gives the parameter shapes and reference
initialisers, and applies the layer as a pure function of (input, parameters). The NNX and Linen layers
(``dcls_jax.nnx``, ``dcls_jax.linen``) are thin holders of parameters around it; the PyTorch import builds the
same spec from a reference layer's arguments.

Three kinds of layer, matching the reference classes:

=========  =====================================================  ===================================
kind       kernel (torch layout)                                  reference classes
=========  =====================================================  ===================================
full       (O, Cg, d_0, ..., d_{n-1}); positions move every axis  Dcls1d, Dcls2d, Dcls3d
partial    (O, Cg, *dense_kernel_size, d); positions move the      Dcls3_1d, Dcls2_1d
           last axis, the others are dense taps
flat       (O, Cg, d, 1) or (O, Cg, 1, d): a 1-D learnable kernel  Dcls2dK1d
           along H (flat_axis 0) or W (flat_axis 1) of a 2-D conv
=========  =====================================================  ===================================

Parameters (names are stable: optimiser groups, conversion and plots find them by name):

  weight     (O, Cg, *dense_kernel_size, Kc)
  positions  (n, O, Cg, *dense_kernel_size, Kc)   row j moves learnable axis j, 0 = the axis centre d_j // 2
  sigmas     same as positions, versions ``gauss`` and ``max`` only
  bias       (O,), if use_bias

Data layout is channels-last (N, *spatial, C) as in Flax; ``channels_first=True`` runs the reference's
(N, C, *spatial) layout directly (no transposes).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from dcls_jax import conv as conv_lib
from dcls_jax import kernels

KINDS = ("full", "partial", "flat")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
POSITION_INIT_STD = 0.5  # reference: N(0, 0.5**2) clamped to [-d//2, d//2] (full, flat); U(-d//2, d//2) partial
SIGMA_INIT = {"gauss": 0.23, "max": 0.0}  # reference: effective sigma 0.5 (gauss), half-width 1 (max)

Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]


def _as_tuple(value, length: int, name: str) -> tuple[int, ...]:
  values = (value,) * length if isinstance(value, int) else tuple(value)
  if len(values) != length or not all(isinstance(v, int) for v in values):
    raise ValueError(f"{name} must be an int or {length} ints, got {value!r}")
  return values


def _positive(values: tuple[int, ...], name: str) -> tuple[int, ...]:
  if any(v < 1 for v in values):
    raise ValueError(f"{name} must be >= 1, got {values}")
  return values


@dataclasses.dataclass(frozen=True)
class DclsSpec:
  """A validated DCLS convolution: sizes, version, how it convolves. Build it with ``make_spec``."""
  in_features: int
  out_features: int
  kernel_count: int
  dilated_kernel_size: tuple[int, ...]  # extents of the learnable axes
  kind: str = "full"
  dense_kernel_size: tuple[int, ...] = ()  # partial only
  flat_axis: int = 0  # flat only
  strides: tuple[int, ...] = (1,)
  padding: Padding = "SAME"
  padding_mode: str = "zeros"
  feature_group_count: int = 1
  use_bias: bool = True
  version: str = "gauss"
  construction: str = "auto"  # kernels.METHODS or "auto"
  conv_algorithm: str = "auto"  # conv.ALGORITHMS or "auto"
  channels_first: bool = False
  gauss_sigma_offset: float = kernels.GAUSS_SIGMA_OFFSET  # 1.0 only to import the reference's Dcls2_1d

  # ---- shapes -------------------------------------------------------------------------------
  @property
  def num_spatial_dims(self) -> int:
    if self.kind == "full":
      return len(self.dilated_kernel_size)
    if self.kind == "partial":
      return len(self.dense_kernel_size) + 1
    return 2

  @property
  def kernel_spatial_shape(self) -> tuple[int, ...]:
    if self.kind == "full":
      return self.dilated_kernel_size
    if self.kind == "partial":
      return self.dense_kernel_size + self.dilated_kernel_size
    return self.dilated_kernel_size + (1,) if self.flat_axis == 0 else (1,) + self.dilated_kernel_size

  @property
  def has_sigmas(self) -> bool:
    return self.version in kernels.VERSIONS_WITH_SIGMAS

  @property
  def weight_shape(self) -> tuple[int, ...]:
    cg = self.in_features // self.feature_group_count
    return (self.out_features, cg) + self.dense_kernel_size + (self.kernel_count,)

  @property
  def positions_shape(self) -> tuple[int, ...]:
    return (len(self.dilated_kernel_size),) + self.weight_shape

  @property
  def fan_in(self) -> int:
    return math.prod(self.weight_shape[1:])

  @property
  def position_limits(self) -> tuple[int, ...]:
    """|positions[j]| <= d_j // 2 keeps element j's centre on its axis (the reference's clamp)."""
    return tuple(d // 2 for d in self.dilated_kernel_size)

  # ---- reference initialisers ----------------------------------------------------------------
  def init_weight(self, key: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = Cg * prod(dense) * Kc."""
    bound = 1 / math.sqrt(self.fan_in)
    return jax.random.uniform(key, self.weight_shape, dtype, -bound, bound)

  def init_bias(self, key: jax.Array, dtype=jnp.float32) -> jax.Array:
    bound = 1 / math.sqrt(self.fan_in)
    return jax.random.uniform(key, (self.out_features,), dtype, -bound, bound)

  def init_positions(self, key: jax.Array, dtype=jnp.float32) -> jax.Array:
    limits = jnp.asarray(self.position_limits, dtype).reshape((-1,) + (1,) * len(self.weight_shape))
    if self.kind == "partial":
      return jax.random.uniform(key, self.positions_shape, dtype, -1, 1) * limits
    return jnp.clip(POSITION_INIT_STD * jax.random.normal(key, self.positions_shape, dtype), -limits, limits)

  def init_sigmas(self, key: jax.Array, dtype=jnp.float32) -> jax.Array:
    del key
    return jnp.full(self.positions_shape, SIGMA_INIT[self.version], dtype)

  def initializer(self, name: str):
    """``init_<name>`` with the ``jax.nn.initializers`` signature ``init(key, shape, dtype)``.

    Lets the Flax layers treat reference and custom initialisers alike; ``shape`` is always the spec's own.
    """
    init = getattr(self, f"init_{name}")
    return lambda key, shape, dtype=jnp.float32: init(key, dtype)

  # ---- the layer as a function -----------------------------------------------------------------
  def kernel(self, weight: jax.Array, positions: jax.Array, sigmas: Optional[jax.Array] = None) -> jax.Array:
    """The dense kernel in torch layout (O, Cg, *kernel_spatial_shape)."""
    self.check_params(weight, positions, sigmas)
    build = dict(dilated_kernel_size=self.dilated_kernel_size, version=self.version, method=self.construction,
                 gauss_sigma_offset=self.gauss_sigma_offset)
    kernel = kernels.build_kernel(weight, positions, sigmas if self.has_sigmas else None, **build)
    if self.kind == "flat":
      kernel = jnp.expand_dims(kernel, -1 - self.flat_axis)
    return kernel

  def apply(self,
            x: jax.Array,
            weight: jax.Array,
            positions: jax.Array,
            sigmas: Optional[jax.Array] = None,
            bias: Optional[jax.Array] = None,
            *,
            precision: Any = None) -> jax.Array:
    """y = conv(x, kernel(weight, positions, sigmas)) + bias.

    Args:
      x: (N, *spatial, in_features), or (N, in_features, *spatial) if channels_first.
    Returns:
      (N, *out_spatial, out_features), or (N, out_features, *out_spatial) if channels_first.
    """
    self.check_input(x)
    kernel = self.kernel(weight, positions, sigmas).astype(x.dtype)
    y = conv_lib.conv(x, kernel, strides=self.strides, padding=self.padding,
                      feature_group_count=self.feature_group_count, padding_mode=self.padding_mode,
                      channels_first=self.channels_first, algorithm=self.conv_algorithm, precision=precision)
    if self.use_bias:
      if bias is None:
        raise ValueError("bias is None but the layer was built with use_bias=True")
      y = y + bias.astype(y.dtype).reshape((-1,) + (1,) * self.num_spatial_dims if self.channels_first else -1)
    return y

  # ---- checks ----------------------------------------------------------------------------------
  def check_input(self, x: jax.Array) -> None:
    rank = self.num_spatial_dims + 2
    if x.ndim != rank:
      layout = "(N, C, *spatial)" if self.channels_first else "(N, *spatial, C)"
      raise ValueError(f"x must have rank {rank} {layout} for a {self.num_spatial_dims}-D DCLS conv, "
                       f"got shape {x.shape}")
    channels = x.shape[1] if self.channels_first else x.shape[-1]
    if channels != self.in_features:
      raise ValueError(f"x must have in_features={self.in_features} channels, got shape {x.shape} "
                       f"(channels_first={self.channels_first})")

  def check_params(self, weight, positions, sigmas) -> None:
    for name, value, shape in (("weight", weight, self.weight_shape), ("positions", positions, self.positions_shape)):
      if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if self.has_sigmas and (sigmas is None or tuple(sigmas.shape) != self.positions_shape):
      got = None if sigmas is None else tuple(sigmas.shape)
      raise ValueError(f"sigmas must have shape {self.positions_shape} for version {self.version!r}, got {got}")


def make_spec(in_features: int,
              out_features: int,
              kernel_count: int,
              dilated_kernel_size: Union[int, Sequence[int]],
              *,
              kind: str = "full",
              num_spatial_dims: Optional[int] = None,
              dense_kernel_size: Union[int, Sequence[int]] = (),
              flat_axis: int = 0,
              strides: Union[int, Sequence[int]] = 1,
              padding: Padding = "SAME",
              padding_mode: str = "zeros",
              feature_group_count: int = 1,
              use_bias: bool = True,
              version: str = "gauss",
              construction: str = "auto",
              conv_algorithm: str = "auto",
              channels_first: bool = False,
              gauss_sigma_offset: float = kernels.GAUSS_SIGMA_OFFSET) -> DclsSpec:
  """Validates a DCLS layer's arguments (clear ValueErrors naming the argument) and returns its spec.

  ``dilated_kernel_size``: per learnable axis. For ``full`` an int needs ``num_spatial_dims``; for ``partial`` and
  ``flat`` it is the single learnable extent d. ``dense_kernel_size`` (partial): the dense taps of the leading axes.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if version not in kernels.VERSIONS:
    raise ValueError(f"version must be one of {kernels.VERSIONS}, got {version!r}")
  if kind == "partial" and version == "v0":
    raise ValueError("version 'v0' is not defined for partial DCLS layers (reference Dcls3_1d/Dcls2_1d): "
                     "expected one of ('v1', 'max', 'gauss')")
  if padding_mode not in PADDING_MODES:
    raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
  if construction not in kernels.METHODS + ("auto",):
    raise ValueError(f"construction must be one of {kernels.METHODS + ('auto',)}, got {construction!r}")
  if conv_algorithm not in conv_lib.ALGORITHMS + ("auto",):
    raise ValueError(f"conv_algorithm must be one of {conv_lib.ALGORITHMS + ('auto',)}, got {conv_algorithm!r}")
  for name, value in (("in_features", in_features), ("out_features", out_features),
                      ("kernel_count", kernel_count), ("feature_group_count", feature_group_count)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  if in_features % feature_group_count or out_features % feature_group_count:
    raise ValueError(f"in_features ({in_features}) and out_features ({out_features}) must be divisible by "
                     f"feature_group_count ({feature_group_count})")
  if kind == "full":
    if isinstance(dilated_kernel_size, int):
      if num_spatial_dims is None:
        raise ValueError("num_spatial_dims is needed when dilated_kernel_size is a single int")
      dilated_kernel_size = (dilated_kernel_size,) * num_spatial_dims
    dilated = tuple(dilated_kernel_size)
    if not 1 <= len(dilated) <= 3:
      raise ValueError(f"dilated_kernel_size must have 1, 2 or 3 entries, got {dilated_kernel_size!r}")
    dilated = _as_tuple(dilated, len(dilated), "dilated_kernel_size")
    dense = ()
  else:
    dilated = _as_tuple(dilated_kernel_size, 1, "dilated_kernel_size")
    dense = ()
    if kind == "partial":
      dense = (dense_kernel_size,) if isinstance(dense_kernel_size, int) else tuple(dense_kernel_size)
      if not 1 <= len(dense) <= 2:
        raise ValueError(f"dense_kernel_size must have 1 or 2 entries, got {dense_kernel_size!r}")
      dense = _positive(_as_tuple(dense, len(dense), "dense_kernel_size"), "dense_kernel_size")
    elif flat_axis not in (0, 1):
      raise ValueError(f"flat_axis must be 0 (kernel along H) or 1 (along W), got {flat_axis!r}")
  _positive(dilated, "dilated_kernel_size")
  spec = DclsSpec(in_features, out_features, kernel_count, dilated, kind=kind, dense_kernel_size=dense,
                  flat_axis=flat_axis, padding=padding, padding_mode=padding_mode,
                  feature_group_count=feature_group_count, use_bias=use_bias, version=version,
                  construction=construction, conv_algorithm=conv_algorithm, channels_first=channels_first,
                  gauss_sigma_offset=gauss_sigma_offset)
  if conv_algorithm == "dft" and spec.num_spatial_dims != 1:
    raise ValueError(f"conv_algorithm='dft' is for 1-D layers; this one has {spec.num_spatial_dims} spatial axes:"
                     " expected 'auto', 'direct' or 'fft'")
  strides = _positive(_as_tuple(strides, spec.num_spatial_dims, "strides"), "strides")
  return dataclasses.replace(spec, strides=strides)
