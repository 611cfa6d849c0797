"""Dense DCLS kernels from learnable element weights, positions and widths.

This module holds the DCLS math, once; layers, converters and models call it.

Every element k of a (out, in) channel pair has a weight w, a real position p_j along each learnable kernel
axis j, and (versions ``gauss`` and ``max``) a width parameter s_j. Its interpolation onto the integer grid of
axis j (length d_j, centre c_j = d_j // 2) is a 1-D profile of delta = index - (p_j + c_j):

=========  ==================================================  ==========================
version    1-D profile g(delta)                                normalised over the grid?
=========  ==================================================  ==========================
``v0``     bilinear: 1 - r at floor(q), r at floor(q) + 1       no
``v1``     relu(1 - |delta|)                                   yes
``max``    relu(|s| + 1 - |delta|)                             yes
``gauss``  exp(-(delta / (|s| + 0.27))**2 / 2)                 yes
=========  ==================================================  ==========================

The element's interpolation is the product of its 1-D profiles; normalised versions divide it by its mass over
the whole grid plus 1e-7, which factorises as prod_j S_j + 1e-7 with S_j the sum of profile j. The kernel is the
weighted sum of the elements' interpolations.

Conventions (one for every version; the PyTorch import maps the reference's rows onto it, see ``torch_io``):
position row j moves kernel axis j and is measured from the centre d_j // 2, so position 0 is the centre.
Derivatives follow the reference: relu and |x| have derivative 0 at 0, floor is a constant, gauss uses squared
distances (finite gradients at distance 0).

Layouts (the reference's, batch axes first):

  weight     (..., Kc)          Kc = kernel_count; "..." is any batch, e.g. (O, Cg) or (O, Cg, e0, e1)
  positions  (n, ..., Kc)       n = number of learnable axes
  sigmas     (n, ..., Kc)       width parameters, ``max`` and ``gauss`` only
  kernel     (..., d_0, ..., d_{n-1})

Two constructions compute the same kernel (to float round-off):

* ``separable``: per-axis profiles of shape (..., Kc, d_j) and one contraction over Kc (an einsum). Memory
  O(Kc * sum_j d_j) per channel pair; one batched matmul.
* ``scatter``: each element scatter-adds its local weights into the zero kernel: the 2**n cells around its
  position for ``v0``/``v1`` (memory O(Kc * 2**n)), its support (the whole grid) for ``max``/``gauss``.

``default_method`` picks one per version and backend from the benchmark.

NaN positions or sigmas are not masked: they make kernel entries NaN (hence outputs NaN), never a silently
finite kernel; with ``separable`` the whole kernel slice of that channel pair is NaN.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

VERSIONS = ("v0", "v1", "max", "gauss")
METHODS = ("separable", "scatter")
VERSIONS_WITH_SIGMAS = ("max", "gauss")

EPS = 1e-7  # added to the joint normalising mass, as in the reference
GAUSS_SIGMA_OFFSET = 0.27  # sigma = |s| + 0.27, so the reference init s = 0.23 gives sigma = 0.5
MAX_WIDTH_OFFSET = 1.0  # half-width = |s| + 1, so the reference init s = 0 gives the v1 hat

_AXIS_LETTERS = "abcdefgh"


def abs_with_zero_derivative(x: jax.Array) -> jax.Array:
  """|x| whose derivative is sign(x), 0 at 0 (torch's convention; ``jnp.abs`` has derivative 1 at 0)."""
  return x * lax.stop_gradient(jnp.sign(x))


def axis_profiles(q: jax.Array, sigma: Optional[jax.Array], grid: jax.Array, version: str,
                  gauss_sigma_offset: float = GAUSS_SIGMA_OFFSET) -> jax.Array:
  """1-D interpolation profiles of elements at grid coordinates ``q`` evaluated at integer ``grid`` indices.

  Args:
    q: (..., Kc) element positions in grid units (centre offset already added).
    sigma: (..., Kc) width parameters for ``max``/``gauss``, else None.
    grid: (w,) grid indices (floats of q's dtype) where the profiles are evaluated, or (..., Kc, w) cells of
      each element.
    version: one of VERSIONS.
    gauss_sigma_offset: sigma = |s| + offset for ``gauss`` (the reference's Dcls2_1d uses 1.0).

  Returns:
    (..., Kc, w) un-normalised profile values.
  """
  q = q[..., None]
  if version == "v0":
    floor = jnp.floor(q)
    r = q - floor  # the only differentiable path, as in the reference
    profile = jnp.where(grid == floor, 1 - r, 0) + jnp.where(grid == floor + 1, r, 0)
    return profile + 0 * r  # propagates NaN positions instead of dropping them
  distance = abs_with_zero_derivative(grid - q)
  if version == "v1":
    return jax.nn.relu(1 - distance)
  width = abs_with_zero_derivative(sigma)[..., None]
  if version == "max":
    return jax.nn.relu(width + MAX_WIDTH_OFFSET - distance)
  delta = (grid - q) / (width + gauss_sigma_offset)
  return jnp.exp(-0.5 * delta * delta)


def _validate(weight, positions, sigmas, dilated_kernel_size, version, method):
  if version not in VERSIONS:
    raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
  if method not in METHODS + ("auto",):
    raise ValueError(f"method must be one of {METHODS + ('auto',)}, got {method!r}")
  if weight.ndim < 1 or weight.shape[-1] < 1:
    raise ValueError(f"weight must have shape (..., kernel_count) with kernel_count >= 1, got {weight.shape}")
  sizes = tuple(dilated_kernel_size)
  if not sizes or any(int(d) != d or d < 1 for d in sizes):
    raise ValueError(f"dilated_kernel_size must be positive ints, one per learnable axis, got {dilated_kernel_size}")
  expected = (len(sizes),) + tuple(weight.shape)
  if tuple(positions.shape) != expected:
    raise ValueError(
        f"positions must have shape (n, *weight.shape) = {expected} for dilated_kernel_size={sizes}, "
        f"got {tuple(positions.shape)}")
  if version in VERSIONS_WITH_SIGMAS:
    if sigmas is None:
      raise ValueError(f"version {version!r} needs sigmas of shape {expected}, got None")
    if tuple(sigmas.shape) != expected:
      raise ValueError(f"sigmas must have shape {expected} (same as positions), got {tuple(sigmas.shape)}")
  return tuple(int(d) for d in sizes)


def default_method(version: str, backend: Optional[str] = None) -> str:
  """The construction used by ``method='auto'``, from the benchmark (benchmarks/bench_dcls.py, README).

  CPU, ``v0``/``v1``: ``scatter``. Its 2**n cells per element need about a seventh of the separable
  construction's memory (fwd+bwd, ConvNeXt-T shapes: 0.29 vs 1.94 MB at C = 96, d = 17, Kc = 34) at the same
  speed. CPU ``max``/``gauss`` and every version on GPU/TPU: ``separable``. A Gaussian's support is the whole
  grid, so its scatter is the dense construction (10x the memory, 2x the time); on GPU/TPU the contraction is a
  batched matmul while XLA's scatter-add is slow (f32 compare-and-swap loops on GPU in jaxlib 0.10.2 - 0.11.0,
  while loops for batched scatters on TPU). On an H100 with jaxlib 0.11.2 the ``v0`` scatter ran as fast as the
  separable construction (layer fwd+bwd within timing noise) with 1/4 - 1/2 of its memory, but it was not
  measured on the jaxlib 0.10 that Python 3.11 installs, so GPUs keep ``separable``.
  """
  backend = backend or jax.default_backend()
  return "scatter" if backend == "cpu" and version in ("v0", "v1") else "separable"


def build_kernel(weight: jax.Array,
                 positions: jax.Array,
                 sigmas: Optional[jax.Array] = None,
                 *,
                 dilated_kernel_size: Sequence[int],
                 version: str = "gauss",
                 method: str = "auto",
                 gauss_sigma_offset: float = GAUSS_SIGMA_OFFSET) -> jax.Array:
  """Builds the dense DCLS kernel.

  Args:
    weight: (..., Kc) element weights.
    positions: (n, ..., Kc); row j is the position along kernel axis j relative to its centre d_j // 2.
    sigmas: (n, ..., Kc) width parameters (``max``, ``gauss``); ignored by ``v0``/``v1``.
    dilated_kernel_size: (d_0, ..., d_{n-1}) the dense kernel's extent along each learnable axis.
    version: ``v0`` | ``v1`` | ``max`` | ``gauss``.
    method: ``separable`` | ``scatter`` | ``auto`` (``default_method``).
    gauss_sigma_offset: sigma = |sigmas| + offset for ``gauss``; 0.27 everywhere in the reference except its
      Dcls2_1d (1.0).

  Returns:
    (..., d_0, ..., d_{n-1}) kernel in weight's dtype. Computation is in at least float32 (bfloat16 inputs are
    promoted, so positions keep their sub-cell resolution) with HIGHEST matmul precision.
  """
  sizes = _validate(weight, positions, sigmas, dilated_kernel_size, version, method)
  if method == "auto":
    method = default_method(version)
  compute_dtype = jnp.promote_types(weight.dtype, jnp.float32)
  weight_c = weight.astype(compute_dtype)
  q = [positions[j].astype(compute_dtype) + (d // 2) for j, d in enumerate(sizes)]
  sig = ([None] * len(sizes) if version not in VERSIONS_WITH_SIGMAS
         else [sigmas[j].astype(compute_dtype) for j in range(len(sizes))])
  if method == "separable" and version == "gauss" and len(sizes) == 1 and weight.shape[-1] == 1:
    sigma = abs_with_zero_derivative(sig[0][..., 0]) + gauss_sigma_offset
    return _one_gaussian(weight_c[..., 0], q[0][..., 0], sigma, sizes[0]).astype(weight.dtype)
  build = _separable if method == "separable" else _scatter
  profile = functools.partial(axis_profiles, version=version, gauss_sigma_offset=gauss_sigma_offset)
  return build(weight_c, q, sig, sizes, version, profile).astype(weight.dtype)


def _grid(size: int, dtype) -> jax.Array:
  return jnp.arange(size, dtype=dtype)


def _normalised_weight(weight, masses, version):
  """weight / (prod_j S_j + EPS) for the normalised versions, weight itself for v0."""
  if version == "v0":
    return weight
  return weight / (jnp.prod(jnp.stack(masses), axis=0) + EPS)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _one_gaussian(weight, q, sigma, size):
  """One gauss element per channel pair along one axis (SNN-delays' synapses): (...) -> (..., size).

  ``w g / (sum g + EPS)`` with ``g = exp(-z**2 / 2)``, ``z = (grid - q) / sigma``. The same values as
  ``_separable``; its JVP is written out, so that the gradient is one pass over the kernel's cotangent instead of
  autodiff's many (fwd+bwd 2x faster at 256 x 700 x 25 on a 2-core CPU).
  """
  return _one_gaussian_parts(weight, q, sigma, size)[0]


def _one_gaussian_parts(weight, q, sigma, size):
  z = (_grid(size, q.dtype) - q[..., None]) / sigma[..., None]
  g = jnp.exp(-0.5 * z * z)
  inv_mass = 1 / (g.sum(-1, keepdims=True) + EPS)
  return g * (weight[..., None] * inv_mass), z, g, inv_mass


@_one_gaussian.defjvp
def _one_gaussian_jvp(size, primals, tangents):
  """d kernel = g / M (dw + w / sigma ((z - <z>) dq + (z**2 - <z**2>) dsigma)), M = sum g + EPS and
  <f> = sum g f / M."""
  weight, q, sigma = primals
  d_weight, d_q, d_sigma = (t[..., None] for t in tangents)
  kernel, z, g, inv_mass = _one_gaussian_parts(weight, q, sigma, size)
  mean_z = (g * z).sum(-1, keepdims=True) * inv_mass
  mean_z2 = (g * z * z).sum(-1, keepdims=True) * inv_mass
  scale = (weight / sigma)[..., None]
  tangent = g * inv_mass * (d_weight + scale * ((z - mean_z) * d_q + (z * z - mean_z2) * d_sigma))
  return kernel, tangent


def _separable(weight, q, sig, sizes, version, profile):
  profiles = [profile(qj, sj, _grid(d, qj.dtype)) for qj, sj, d in zip(q, sig, sizes)]
  alpha = _normalised_weight(weight, [p.sum(-1) for p in profiles], version)
  if weight.shape[-1] == 1:
    # One element per channel pair (the delay synapses of SNN-delays): an outer product, not a batch of
    # contractions of size 1 (XLA:CPU runs those as O * Cg tiny matmuls, 4x slower in fwd+bwd).
    kernel = alpha[..., 0].reshape(alpha.shape[:-1] + (1,) * len(sizes))
    for j, p in enumerate(profiles):
      kernel = kernel * p[..., 0, :].reshape(p.shape[:-2] + (1,) * j + p.shape[-1:] + (1,) * (len(sizes) - 1 - j))
    return kernel
  axes = _AXIS_LETTERS[:len(sizes)]
  spec = "...k," + ",".join(f"...k{a}" for a in axes) + f"->...{axes}"
  return jnp.einsum(spec, alpha, *profiles, precision=lax.Precision.HIGHEST)


def _scatter(weight, q, sig, sizes, version, profile):
  batch_shape, n = weight.shape[:-1], len(sizes)
  local = version in ("v0", "v1")  # support: 2 cells per axis; max/gauss: the whole axis
  profiles, cell_indices = [], []
  for qj, sj, d in zip(q, sig, sizes):
    if local:
      first = jnp.floor(jnp.where(jnp.isnan(qj), 0, qj))  # a NaN position still reaches the values
      cells = lax.stop_gradient(first)[..., None] + _grid(2, qj.dtype)
    else:
      cells = jnp.broadcast_to(_grid(d, qj.dtype), qj.shape + (d,))
    inside = (cells >= 0) & (cells < d)
    profiles.append(jnp.where(inside, profile(qj, sj, cells), 0))
    cell_indices.append(jnp.where(inside, cells, d).astype(jnp.int32))  # index d is dropped below
  alpha = _normalised_weight(weight, [p.sum(-1) for p in profiles], version)
  # values and indices: (..., Kc, w_0, ..., w_{n-1}), the outer product of the per-axis cells.
  values, indices = alpha, []
  for j, (values_j, cells) in enumerate(zip(profiles, cell_indices)):
    outer = values_j.shape[:-1] + (1,) * j + values_j.shape[-1:]
    values = values[..., None] * values_j.reshape(outer)
    indices.append(cells.reshape(outer + (1,) * (n - 1 - j)))
  flat_batch = math.prod(batch_shape)
  batch_index = jnp.arange(flat_batch).reshape(batch_shape + (1,) * (n + 1))
  flat = lambda a: jnp.broadcast_to(a, values.shape).reshape((flat_batch, -1))
  kernel = jnp.zeros((flat_batch,) + sizes, weight.dtype)
  kernel = kernel.at[(flat(batch_index), *map(flat, indices))].add(flat(values), mode="drop")
  return kernel.reshape(batch_shape + sizes)


def build_partial_kernel(weight: jax.Array,
                         positions: jax.Array,
                         sigmas: Optional[jax.Array] = None,
                         *,
                         dilated_kernel_size: int,
                         version: str = "gauss",
                         method: str = "auto") -> jax.Array:
  """Kernel whose last axis is learnable and whose other kernel axes are dense taps (reference Dcls3_1d/2_1d).

  Args:
    weight: (O, Cg, *dense_kernel_size, Kc).
    positions, sigmas: (1, O, Cg, *dense_kernel_size, Kc).
    dilated_kernel_size: d, the extent of the learnable (last) axis.

  Returns:
    (O, Cg, *dense_kernel_size, d): every dense tap holds its own Kc elements, normalised over the d taps only.
  """
  return build_kernel(weight, positions, sigmas, dilated_kernel_size=(dilated_kernel_size,),
                      version=version, method=method)


def build_flat_kernel(weight: jax.Array,
                      positions: jax.Array,
                      sigmas: Optional[jax.Array] = None,
                      *,
                      dilated_kernel_size: int,
                      flat_axis: int,
                      version: str = "v1",
                      method: str = "auto") -> jax.Array:
  """A 1-D learnable kernel laid along one axis of a 2-D convolution (reference Dcls2dK1d).

  Args:
    weight: (O, Cg, Kc). positions, sigmas: (1, O, Cg, Kc).
    flat_axis: 0 puts the kernel along H, giving (O, Cg, d, 1); 1 along W, giving (O, Cg, 1, d).
  """
  if flat_axis not in (0, 1):
    raise ValueError(f"flat_axis must be 0 (along H) or 1 (along W), got {flat_axis!r}")
  kernel = build_kernel(weight, positions, sigmas, dilated_kernel_size=(dilated_kernel_size,),
                        version=version, method=method)
  return jnp.expand_dims(kernel, -1 - flat_axis)
