"""PyTorch DCLS (``dcls==0.1.1``, import name ``DCLS``) <-> dcls-jax: layer arguments, parameters, gradients.

The reference stores positions as P (n, O, Cg, [e0, e1,] Kc) and widths as SIG (same shape), but which kernel
axis a row of P drives, and from which centre, depends on class and version (``shared/spec/dcls.md`` §2.4-2.5):

=====================  ================================  ===================================
reference              row j of P/SIG drives kernel axis  axes (torch order D, H, W)
=====================  ================================  ===================================
Dcls1d, N_M, 2dK1d     the learnable axis                 (0,)
Dcls2d ``v0``          H, W                               (0, 1)
Dcls2d other versions  W, H                               (1, 0)
Dcls3d ``v0``          D, W, H                            (0, 2, 1)
Dcls3d other versions  W, H, D                            (2, 1, 0)
=====================  ================================  ===================================

and row j is measured from d_j // 2 (the centre of ITS OWN dilated size entry, not of the axis it drives). Ours:
row a drives axis a from d_a // 2. Both describe the same grid coordinate q, so the import is exact:

  positions[a(j)] = P[j] + d_j // 2 - d_{a(j)} // 2,   sigmas[a(j)] = SIG[j]

Gradients map by the row permutation alone (the offset is a constant). For square/cubic kernels the offsets
cancel and the import is a pure permutation; for non-square kernels it reproduces the reference's (buggy)
placement exactly, positions included - the reference clamp interval of such a row is then not the natural
[-d_a//2, d_a//2] of ours (spec §2.5).

The reference's Dcls2_1d (repository HEAD, not in 0.1.1) uses sigma = |SIG| + 1.0 for ``gauss``: its spec
carries ``gauss_sigma_offset=1.0`` so SIG imports unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from dcls_jax import layer

# class name -> (kind, default version, number of spatial dims)
REFERENCE_CLASSES = {
    "Dcls1d": ("full", "gauss", 1),
    "Dcls2d": ("full", "gauss", 2),
    "Dcls3d": ("full", "gauss", 3),
    "Dcls3_1d": ("partial", "gauss", 3),
    "Dcls2_1d": ("partial", "gauss", 2),
    "Dcls2dK1d": ("flat", "v1", 2),
}
_AXES_OF_ROWS = {("Dcls2d", True): (0, 1), ("Dcls2d", False): (1, 0),
                 ("Dcls3d", True): (0, 2, 1), ("Dcls3d", False): (2, 1, 0)}
_REFERENCE_KWARGS = {"in_channels", "out_channels", "kernel_count", "stride", "padding", "dilated_kernel_size",
                     "dense_kernel_size", "groups", "bias", "padding_mode", "version", "use_implicit_gemm",
                     "flat_dim"}


def _per_axis(value, n: int, name: str) -> tuple[int, ...]:
  values = (value,) * n if isinstance(value, int) else tuple(value)
  if len(values) == 1 and n > 1:
    values = values * n
  if len(values) != n:
    raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
  return values


def _class_info(class_name: str):
  if class_name not in REFERENCE_CLASSES:
    raise ValueError(f"class_name must be one of {sorted(REFERENCE_CLASSES)}, got {class_name!r}")
  return REFERENCE_CLASSES[class_name]


def spec_from_reference(class_name: str, kwargs: Mapping[str, Any], *, channels_first: bool = True,
                        conv_algorithm: str = "auto", construction: str = "auto") -> layer.DclsSpec:
  """The ``DclsSpec`` of a reference layer built as ``DCLS.construct.modules.<class_name>(**kwargs)``.

  ``channels_first=True`` keeps the reference's (N, C, *spatial) data layout.
  """
  kind, default_version, n = _class_info(class_name)
  unknown = set(kwargs) - _REFERENCE_KWARGS
  if unknown:
    raise ValueError(f"kwargs has arguments the reference {class_name} does not take: {sorted(unknown)}")
  missing = {"in_channels", "out_channels", "kernel_count"} - set(kwargs)
  if missing:
    raise ValueError(f"kwargs must give {sorted(missing)} for a reference {class_name}")
  version = kwargs.get("version", default_version)
  dilated = kwargs.get("dilated_kernel_size", 1)
  extra = {}
  if kind == "full":
    dilated = _per_axis(dilated, n, "dilated_kernel_size")
  elif kind == "partial":
    extra["dense_kernel_size"] = _per_axis(kwargs.get("dense_kernel_size", 1), n - 1, "dense_kernel_size")
    if class_name == "Dcls2_1d":
      extra["gauss_sigma_offset"] = 1.0
  else:
    extra["flat_axis"] = kwargs.get("flat_dim", 0)
  padding = _per_axis(kwargs.get("padding", 0), n, "padding")
  return layer.make_spec(
      kwargs["in_channels"], kwargs["out_channels"], kwargs["kernel_count"], dilated, kind=kind,
      strides=_per_axis(kwargs.get("stride", 1), n, "stride"), padding=[(p, p) for p in padding],
      padding_mode=kwargs.get("padding_mode", "zeros"), feature_group_count=kwargs.get("groups", 1),
      use_bias=kwargs.get("bias", True), version=version, construction=construction,
      conv_algorithm=conv_algorithm, channels_first=channels_first, **extra)


def axes_of_rows(class_name: str, version: str, num_rows: int) -> tuple[int, ...]:
  """The kernel axis (among the learnable ones) that row j of the reference's P/SIG drives."""
  _class_info(class_name)
  if num_rows == 1:
    return (0,)
  return _AXES_OF_ROWS[(class_name, version == "v0")]


def _row_offsets(spec: layer.DclsSpec, axes: tuple[int, ...]) -> np.ndarray:
  """Per reference row j: d_j // 2 - d_{a(j)} // 2, what converts the reference's P[j] into our positions."""
  half = [d // 2 for d in spec.dilated_kernel_size]
  return np.array([half[j] - half[a] for j, a in enumerate(axes)])


def _check_state(state: Mapping[str, Any], spec: layer.DclsSpec, class_name: str) -> None:
  expected = {"weight": spec.weight_shape, "P": spec.positions_shape}
  if spec.has_sigmas:
    expected["SIG"] = spec.positions_shape
  if spec.use_bias:
    expected["bias"] = (spec.out_features,)
  for name, shape in expected.items():
    if name not in state:
      raise ValueError(f"state_dict of a {class_name} ({spec.version}) must hold {name!r} of shape {shape}; "
                       f"it has {sorted(state)}")
    if tuple(np.shape(state[name])) != shape:
      raise ValueError(f"state_dict[{name!r}] must have shape {shape}, got {tuple(np.shape(state[name]))}")


def params_from_reference(class_name: str, kwargs: Mapping[str, Any],
                          state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Reference state_dict (torch tensors or arrays) -> {weight, positions, [sigmas], [bias]} numpy arrays.

  Extra state entries (the buffers ``DCK.IDX``/``DCK.lim`` of Dcls2_1d) are ignored.
  """
  spec = spec_from_reference(class_name, kwargs)
  state = {k: _to_numpy(v) for k, v in state_dict.items()}
  _check_state(state, spec, class_name)
  axes = axes_of_rows(class_name, spec.version, len(spec.dilated_kernel_size))
  offsets = _row_offsets(spec, axes)
  positions = np.empty_like(state["P"])
  for j, a in enumerate(axes):
    positions[a] = state["P"][j] + offsets[j].astype(positions.dtype)
  params = {"weight": state["weight"], "positions": positions}
  if spec.has_sigmas:
    params["sigmas"] = state["SIG"][np.argsort(axes)]
  if spec.use_bias:
    params["bias"] = state["bias"]
  return params


def params_to_reference(class_name: str, kwargs: Mapping[str, Any],
                        params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{weight, positions, [sigmas], [bias]} -> the reference's state_dict entries (numpy; wrap with torch)."""
  spec = spec_from_reference(class_name, kwargs)
  axes = axes_of_rows(class_name, spec.version, len(spec.dilated_kernel_size))
  offsets = _row_offsets(spec, axes)
  positions = _to_numpy(params["positions"])
  state = {"weight": _to_numpy(params["weight"]),
           "P": np.stack([positions[a] - offsets[j].astype(positions.dtype) for j, a in enumerate(axes)])}
  if spec.has_sigmas:
    state["SIG"] = _to_numpy(params["sigmas"])[list(axes)]
  if spec.use_bias:
    state["bias"] = _to_numpy(params["bias"])
  return state


def gradients_to_reference(class_name: str, kwargs: Mapping[str, Any],
                           grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Gradients wrt our params -> gradients wrt the reference's (same row permutation, no offsets)."""
  spec = spec_from_reference(class_name, kwargs)
  axes = list(axes_of_rows(class_name, spec.version, len(spec.dilated_kernel_size)))
  names = {"weight": "weight", "positions": "P", "sigmas": "SIG", "bias": "bias"}
  out = {}
  for name, grad in grads.items():
    if name not in names:
      raise ValueError(f"grads has an unknown parameter {name!r}; expected some of {sorted(names)}")
    if grad is None:
      continue
    grad = _to_numpy(grad)
    out[names[name]] = grad[axes] if name in ("positions", "sigmas") else grad
  return out


def _to_numpy(value) -> np.ndarray:
  """Torch tensors and arrays to numpy; bfloat16/float16 tensors become float32 (numpy has no bfloat16)."""
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu()
    if value.is_floating_point() and value.element_size() < 4:
      value = value.float()
    value = value.numpy()
  return np.asarray(value)
