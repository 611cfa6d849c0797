"""PNG pictures of a run: training curves, and where each DCLS layer put its kernel elements.

Figures are drawn with matplotlib's object API on its Agg canvas (``matplotlib.figure.Figure``, no pyplot): no
window ever opens and no global backend is changed.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from dcls_jax import kernels
from train.metrics import read_metrics

RECORD_KEYS = ("step", "split", "epoch")  # bookkeeping of a metrics record, not curves
PANEL_INCHES = (4.5, 3.2)

# One compilation per kernel shape instead of one per operation of an eager call (seconds on CPU).
_build_kernel = jax.jit(kernels.build_kernel, static_argnames=("dilated_kernel_size", "version"))


def _save(figure: Figure, out_png: str | os.PathLike) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  figure.savefig(out_png, dpi=100)
  return str(out_png)


def plot_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> str:
  """One panel per metric name of a metrics file (``train.metrics``), curves per split against the step.

  ``train`` records (loss, learning rate per logged step) are lines; other splits (evaluation at the end of each
  epoch) are lines with markers, one point per evaluation; a split has one colour in every panel. Returns
  ``out_png``.
  """
  records = read_metrics(metrics_path)
  names = list(dict.fromkeys(name for record in records for name in record if name not in RECORD_KEYS))
  if not names:
    raise ValueError(f"metrics_path {metrics_path} holds no metrics")
  colours = {split: f"C{index}" for index, split in enumerate(dict.fromkeys(record["split"] for record in records))}
  columns = min(3, len(names))
  rows = math.ceil(len(names) / columns)
  figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), layout="constrained")
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for ax, name in zip(axes, names):
    splits = dict.fromkeys(record["split"] for record in records if name in record)
    for split in splits:
      points = [(record["step"], record[name]) for record in records if record["split"] == split and name in record]
      steps, values = zip(*points)
      ax.plot(steps, values, marker=None if split == "train" else "o", markersize=3, color=colours[split],
              label=split)
    ax.set(title=name, xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in axes[len(names):]:
    ax.set_axis_off()
  return _save(figure, out_png)


def _dcls_layers(params: Any, path: tuple = ()) -> list[tuple[tuple, Mapping[str, Any]]]:
  """(path, layer dict) of every dict in ``params`` holding ``weight`` and ``positions``, depth first."""
  if not isinstance(params, Mapping):
    return []
  if "weight" in params and "positions" in params:
    return [(path, params)]
  return [found for key, child in params.items() for found in _dcls_layers(child, path + (key,))]


def _channel_pairs(layer: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """weight (P, Kc), positions (n, P, Kc) and sigmas (n, P, Kc) or None of a layer's P channel pairs."""
  weight = np.asarray(layer["weight"])
  flat = lambda array: np.asarray(array).reshape(-1, weight.size // weight.shape[-1], weight.shape[-1])
  sigmas = layer.get("sigmas")
  return weight.reshape(-1, weight.shape[-1]), flat(layer["positions"]), None if sigmas is None else flat(sigmas)


def _dense_kernel(weight: np.ndarray, positions: np.ndarray, sigmas: np.ndarray | None,
                  limits: Sequence[int]) -> np.ndarray:
  """The dense kernel (d_0, ..., d_{n-1}), d_j = 2 * limits[j] + 1, of one channel pair's weight (Kc,),
  positions and sigmas (n, Kc).

  The version is not part of the parameters: ``gauss`` with sigmas (a ``max`` layer is drawn as gauss), ``v1``
  without (``v0`` differs from it only by normalisation at the kernel's edge).
  """
  kernel = _build_kernel(jnp.asarray(weight), jnp.asarray(positions),
                         None if sigmas is None else jnp.asarray(sigmas),
                         dilated_kernel_size=tuple(2 * limit + 1 for limit in limits),
                         version="v1" if sigmas is None else "gauss")
  return np.asarray(kernel)


def _draw_delays(positions_ax, kernel_ax, name: str, positions: np.ndarray, kernel: np.ndarray,
                 limit: int) -> None:
  """1 learnable axis: a histogram of positions (1, P, Kc), one bin per grid cell; the kernel (d,) as a curve."""
  positions_ax.hist(positions.ravel(), bins=np.arange(-limit - 0.5, limit + 1))
  positions_ax.set(title=f"{name}: positions of {positions.shape[1]} channel pairs", xlabel="position",
                   ylabel="elements")
  kernel_ax.plot(np.arange(-limit, limit + 1), kernel, marker=".")
  kernel_ax.set(title=f"{name}: kernel of channel pair 0", xlabel="position")


def _draw_2d(positions_ax, kernel_ax, name: str, weight: np.ndarray, positions: np.ndarray, kernel: np.ndarray,
             limits: Sequence[int], max_channels: int) -> None:
  """n >= 2 learnable axes: positions (n, P, Kc) of a few channel pairs on the (H, W) box; the kernel as an image
  in the same position units (axes beyond the first two summed)."""
  shown = min(max_channels, positions.shape[1])
  magnitudes = np.abs(weight[:shown])
  areas = 10 + 90 * magnitudes / max(magnitudes.max(), 1e-12)
  for channel in range(shown):
    positions_ax.scatter(positions[1, channel], positions[0, channel], s=areas[channel], alpha=0.7)
  box = (-limits[1] - 0.5, limits[1] + 0.5, limits[0] + 0.5, -limits[0] - 0.5)  # left, right, bottom, top
  extra_axes = " (axes 0, 1)" if positions.shape[0] > 2 else ""
  positions_ax.set(xlim=box[:2], ylim=box[2:], aspect="equal", xlabel="W position", ylabel="H position",
                   title=f"{name}: {shown} channel pairs{extra_axes}")
  positions_ax.grid(alpha=0.3)
  image = kernel.reshape(kernel.shape[:2] + (-1,)).sum(-1)
  scale = max(np.abs(image).max(), 1e-12)
  drawn = kernel_ax.imshow(image, cmap="RdBu_r", vmin=-scale, vmax=scale, extent=box)
  kernel_ax.set(title=f"{name}: kernel of channel pair 0", xlabel="W position", ylabel="H position")
  kernel_ax.figure.colorbar(drawn, ax=kernel_ax, shrink=0.8)


def plot_dcls_kernels(params: Any, position_limits: Mapping[tuple, Sequence[int]], out_png: str | os.PathLike, *,
                      max_channels: int = 8) -> str:
  """One row of two panels per DCLS layer of ``params``: where its elements are, and the kernel they make.

  Args:
    params: nested dict of arrays (``nnx.State.to_pure_dict()``); a DCLS layer is a dict holding ``weight``
      (O, Cg, *dense, Kc) and ``positions`` (n, O, Cg, *dense, Kc), maybe ``sigmas``. Its channel pairs
      (o, c, *dense) are numbered in row-major order.
    position_limits: ``dcls_jax.optim.dcls_position_limits(model)``: the path of each positions leaf, e.g.
      ``('stages', 0, 'conv', 'positions')``, to its per-axis limits d_j // 2.
    out_png: the file written.
    max_channels: how many channel pairs the scatter shows.

  Left panel: for n >= 2, the positions along axes 0 (H, downwards) and 1 (W) of the first ``max_channels``
  channel pairs, one colour per pair, marker area by |weight|, over the kernel box [-limit, limit]; for n = 1
  (delays, partial and flat layers), a histogram of all positions, one bin per grid cell. Right panel: the dense
  kernel of channel pair 0 (``_dense_kernel`` says which version is drawn).

  Returns ``out_png``.
  """
  if max_channels < 1:
    raise ValueError(f"max_channels must be >= 1, got {max_channels}")
  layers = _dcls_layers(params)
  if not layers:
    raise ValueError("params hold no DCLS layer (a dict with 'weight' and 'positions')")
  figure = Figure(figsize=(2 * PANEL_INCHES[0], 1.2 * PANEL_INCHES[1] * len(layers)), layout="constrained")
  for (positions_ax, kernel_ax), (path, layer) in zip(figure.subplots(len(layers), 2, squeeze=False), layers):
    weight, positions, sigmas = _channel_pairs(layer)
    positions_path = path + ("positions",)
    if positions_path not in position_limits:
      raise ValueError(f"position_limits has no entry {positions_path}; it has {sorted(position_limits, key=str)}")
    limits = tuple(int(limit) for limit in position_limits[positions_path])
    if len(limits) != positions.shape[0]:
      raise ValueError(f"position_limits[{positions_path}] must hold {positions.shape[0]} limits (one per "
                       f"learnable axis), got {limits}")
    name = "/".join(map(str, path)) or "params"
    kernel = _dense_kernel(weight[0], positions[:, 0], None if sigmas is None else sigmas[:, 0], limits)
    if len(limits) == 1:
      _draw_delays(positions_ax, kernel_ax, name, positions, kernel, limits[0])
    else:
      _draw_2d(positions_ax, kernel_ax, name, weight, positions, kernel, limits, max_channels)
  return _save(figure, out_png)
