"""Golden fixtures made on the fly from the live PyTorch reference (``dcls==0.1.1``), in the fixture format.

``make_fixture`` follows ``shared/fixtures/README.md`` (arch ``dcls_layer``): random parameters (not the
module's init), loss = sum(y * R), and per-key tolerances atol = max(1e-6, 20 * max|float32 - float64|),
rtol = 1e-5 for float32 (1e-10 / 1e-10 for float64), so ``models.parity`` checks our port exactly as it checks
the shipped fixtures.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import numpy as np

torch = __import__("pytest").importorskip("torch")
from DCLS.construct import modules as reference_modules  # noqa: E402

torch.backends.cudnn.allow_tf32 = False


def learnable_limits(layer) -> list[int]:
  """L_j = dilated_kernel_size[j] // 2 per row of P."""
  return [d // 2 for d in layer.dilated_kernel_size]


def random_parameters(layer, rng: np.random.Generator, *, kinks: bool) -> dict[str, np.ndarray]:
  """Parameters drawn as the shipped fixtures draw them.

  kinks: a quarter of the positions exactly at +-L_j, a quarter on random integers (the kinks of |x|, relu and
  floor), and a quarter of the `max` widths exactly 0.
  """
  weight = layer.weight.detach().numpy()
  bound = 1 / np.sqrt(np.prod(weight.shape[1:]))
  params = {"weight": rng.uniform(-bound, bound, weight.shape)}
  rows = []
  for limit in learnable_limits(layer):
    row = rng.uniform(-limit, limit, weight.shape)
    if kinks:
      pick = rng.integers(0, 4, weight.shape)
      row = np.where(pick == 0, rng.choice([-limit, limit], weight.shape), row)
      row = np.where(pick == 1, rng.integers(-limit, limit + 1, weight.shape), row)
    rows.append(row)
  params["P"] = np.stack(rows)
  if layer.SIG is not None:
    sig = rng.uniform(-1.5, 1.5, params["P"].shape)
    if kinks and layer.version == "max":
      sig = np.where(rng.integers(0, 4, sig.shape) == 0, 0.0, sig)
    params["SIG"] = sig
  if layer.bias is not None:
    params["bias"] = rng.uniform(-bound, bound, layer.bias.shape)
  return params


def _run(layer, params: Mapping[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray, dtype) -> dict:
  layer = layer.to(dtype)
  with torch.no_grad():
    for name, value in params.items():
      getattr(layer, name).copy_(torch.as_tensor(value, dtype=dtype))
  x_t = torch.as_tensor(x, dtype=dtype)
  y = layer(x_t)
  loss = (y * torch.as_tensor(cotangent, dtype=dtype)).sum()
  names = list(params)
  grads = torch.autograd.grad(loss, [getattr(layer, n) for n in names])
  kernel = layer.DCK(layer.weight, layer.P, layer.SIG)
  if isinstance(layer, reference_modules.Dcls2dK1d):
    kernel = kernel.unsqueeze(-1 - layer.flat_dim)
  out = {"output/y": y, "output/kernel": kernel}
  out.update({f"grad/{n}": g for n, g in zip(names, grads)})
  return {k: v.detach().numpy() for k, v in out.items()}


def make_fixture(class_name: str,
                 kwargs: Mapping[str, Any],
                 input_shape: tuple[int, ...],
                 *,
                 seed: int = 0,
                 dtype: str = "float32",
                 kinks: bool = False,
                 params: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
  """Runs ``DCLS.construct.modules.<class_name>(**kwargs)`` and returns the fixture's arrays (``meta`` included).

  ``params`` overrides the random parameters (reference layout, keys weight/P/SIG/bias).
  """
  rng = np.random.default_rng(seed)
  torch.manual_seed(seed)
  layer = getattr(reference_modules, class_name)(**kwargs)
  values = dict(random_parameters(layer, rng, kinks=kinks))
  values.update(params or {})
  x = rng.normal(size=input_shape)
  with torch.no_grad():
    out_shape = tuple(layer.double()(torch.as_tensor(x)).shape)
  cotangent = rng.normal(size=out_shape)
  torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
  result = _run(layer, values, x, cotangent, torch_dtype)
  if dtype == "float32":
    exact = _run(layer, values, x, cotangent, torch.float64)
    tolerance = {k: {"atol": max(1e-6, 20 * float(np.max(np.abs(v - exact[k]), initial=0))), "rtol": 1e-5}
                 for k, v in result.items()}
  else:
    tolerance = {k: {"atol": 1e-10, "rtol": 1e-10} for k in result}
  meta = {"arch": "dcls_layer", "reference": "dcls 0.1.1 (live)", "dtype": dtype,
          "config": {"class": class_name, "kwargs": dict(kwargs)}, "tolerance": tolerance,
          "loss": "sum(output/y * input/R)"}
  arrays = {"meta": np.array(json.dumps(meta))}
  arrays.update({f"state/{k}": np.asarray(v, dtype) for k, v in values.items()})
  arrays.update({"input/x": x.astype(dtype), "input/R": cotangent.astype(dtype)})
  arrays.update(result)
  return arrays
