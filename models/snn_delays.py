"""SNN-delays (Hammouamri et al., ICLR 2024): a feed-forward spiking network whose synapses learn their delays.

Every synapse (out j <- in i) has a weight and a learnable delay, held as a 1-D DCLS ``gauss`` kernel over time
with one element per synapse (``dcls_jax``), applied causally. Network, for ``num_hidden_layers`` L::

  [DelaySynapses -> BatchNorm over time and batch -> LIF -> dropout (one mask per sequence)] x L
  -> DelaySynapses -> readout LIF

The readout neuron never fires; its membrane trace u is the output, which the task 'snn_delays'
(``train/tasks.py``) turns into logits (sum over time of the per-step class softmax). No biases.

Delays (K = ``max_delay``, odd): output step n of a layer sees the input at n - d for a synapse with delay d. The
layer pads time with K - 1 zeros on the left and (K - 1) // 2 on the right, so every layer lengthens the sequence
by (K - 1) // 2 steps: T_final = T + (L + 1) (K - 1) // 2. A position p in [-K//2, K//2] (element centre
K//2 + p on the kernel) means the delay d = K//2 - p steps: p = K//2 is no delay, p = -K//2 the longest, K - 1.

Modes (``module.train()`` / ``module.eval()``):
  train: Gaussian kernels of width |sigma| + 0.27, BatchNorm on batch statistics, dropout on.
  eval:  the reference's inference step: positions rounded half to even and clamped, a one-tap kernel holding
         weight / (1 + 1e-7) (DCLS ``max`` with sigma 0), BatchNorm running statistics, no dropout.

The raw sigma of every synapse is the ``sigmas`` parameter; it is not trained (``dcls_sigma_lr_mult`` 0) but set
per epoch from ``sigma_schedule``. Parameter names: ``weight`` (O, C_in, 1), ``positions`` and ``sigmas``
(1, O, C_in, 1) in DCLS layers (the reference's weight, P, SIG), ``scale``/``bias`` and the BatchStats
``mean``/``var`` in BatchNorms.

Data: x (B, T, num_inputs) float -> u (B, T_final, num_outputs), batch-major; internally time-major.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from flax.nnx.nn import dtypes

from dcls_jax import kernels
from dcls_jax import nnx as dcls_nnx
from dcls_jax import optim as dcls_optim
from models import layers
from models import lif
from train import optimizers
from train import step as step_lib
from train import tasks



def _check_int(value: Any, name: str, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


# ---- layers ------------------------------------------------------------------------------------------

def _positions_init(max_delay: int):
  """The reference's U((-K)//2, K//2) (floor division: biased towards long delays), clamped to [-K//2, K//2]."""
  half = max_delay // 2

  def init(key, shape, dtype=jnp.float32):
    return jnp.clip(jax.random.uniform(key, shape, dtype, (-max_delay) // 2, half), -half, half)

  return init


# torch kaiming_uniform_(nonlinearity='relu') of a (O, C_in, 1) weight: U(-sqrt(6 / C_in), sqrt(6 / C_in)).
_KAIMING_UNIFORM_RELU = nnx.initializers.variance_scaling(2.0, "fan_in", "uniform", in_axis=1, out_axis=0)


class DelaySynapses(dcls_nnx.DclsConv):
  """Dense synapses with one learnable delay each: (T, B, in_features) -> (T + (K-1)//2, B, out_features).

  A 1-D DCLS ``gauss`` convolution over time (one element per synapse, no bias, causal padding), reference
  ``Dcls1d(in, out, kernel_count=1, dilated_kernel_size=K, bias=False, version='gauss')``. In eval mode
  (``deterministic``) it uses integer delays: ``rounded_positions`` and the one-tap ``max`` kernel.

  Args:
    in_features, out_features: neurons before and after.
    max_delay: K, the kernel length in time steps (odd); delays range over 0..K-1.
    sigma_init: initial raw sigma (default K // 2, the reference's sigInit).
    fixed: integer delays drawn at init and never learned (the paper's ``snn_delays_lr0`` ablation: version
      ``max``, sigma 0, positions rounded once; their gradient is zero).
    deterministic, conv_algorithm, dtype, param_dtype, precision, rngs: as ``dcls_jax.nnx.DclsConv``.
  """

  def __init__(self, in_features: int, out_features: int, max_delay: int, *, sigma_init: Optional[float] = None,
               fixed: bool = False, deterministic: bool = False, conv_algorithm: str = "auto",
               dtype: Optional[Any] = None, param_dtype: Any = jnp.float32, precision: Any = None, rngs: nnx.Rngs):
    _check_int(max_delay, "max_delay", 1)
    if max_delay % 2 == 0:
      raise ValueError(f"max_delay must be odd (the reference makes it odd), got {max_delay}")
    half = max_delay // 2
    super().__init__(in_features, out_features, 1, (max_delay,), padding=[(max_delay - 1, half)], use_bias=False,
                     version="gauss", conv_algorithm=conv_algorithm, dtype=dtype, param_dtype=param_dtype,
                     precision=precision, weight_init=_KAIMING_UNIFORM_RELU,
                     positions_init=_positions_init(max_delay),
                     sigmas_init=nnx.initializers.constant(half if sigma_init is None else sigma_init), rngs=rngs)
    self.eval_spec = dataclasses.replace(self.spec, version="max")
    self.deterministic = deterministic
    self.fixed = fixed
    if fixed:  # the ablation's fixed random delays: rounded once, never moved (zero gradient through the rounding)
      self.positions[...] = self.rounded_positions()

  def rounded_positions(self) -> jax.Array:
    """Positions rounded half to even and clamped to [-K//2, K//2], as the reference evaluates: (1, O, C_in, 1)."""
    half = self.spec.position_limits[0]
    return jnp.clip(jnp.round(self.positions[...]), -half, half)

  def delays(self) -> jax.Array:
    """Delay of every synapse in time steps, K//2 - position: (O, C_in); integers in eval mode."""
    positions = self.rounded_positions() if self.deterministic or self.fixed else self.positions[...]
    return self.spec.position_limits[0] - positions[0, ..., 0]

  def _kernel_inputs(self):
    """(spec, positions, sigmas) of the current mode; ``fixed`` synapses always use integer delays."""
    if self.deterministic or self.fixed:
      positions = self.rounded_positions()
      return self.eval_spec, positions, jnp.zeros_like(positions)
    return self.spec, self.positions[...], self.sigmas[...]

  def kernel(self) -> jax.Array:
    """The dense kernel of the current mode, (O, C_in, K); tap k delays by K - 1 - k steps."""
    spec, positions, sigmas = self._kernel_inputs()
    return spec.kernel(self.weight[...], positions, sigmas)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 3 or x.shape[-1] != self.spec.in_features:
      raise ValueError(f"x must be time-major (T, B, {self.spec.in_features}), got shape {x.shape}")
    x, weight = dtypes.promote_dtype((x, self.weight[...]), dtype=self.dtype)
    spec, positions, sigmas = self._kernel_inputs()
    y = spec.apply(jnp.swapaxes(x, 0, 1), weight, positions, sigmas, precision=self.precision)
    return jnp.swapaxes(y, 0, 1)


class InstantSynapses(nnx.Linear):
  """Synapses without delays (the paper's ``snn`` ablation): a per-step dense map (T, B, in) -> (T, B, out), no
  bias, no padding (the sequence keeps its length); the same init as ``DelaySynapses``' weights."""

  def __init__(self, in_features: int, out_features: int, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_features, out_features, use_bias=False, param_dtype=param_dtype,
                     kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "uniform"), rngs=rngs)


DELAYS = ("learned", "fixed", "none")


def _synapses(in_features: int, out_features: int, *, delays: str, max_delay: int, sigma_init: Optional[float],
              conv_algorithm: str, param_dtype: Any, rngs: nnx.Rngs):
  """The synapses of one layer for the ``delays`` variant."""
  if delays == "none":
    return InstantSynapses(in_features, out_features, param_dtype=param_dtype, rngs=rngs)
  return DelaySynapses(in_features, out_features, max_delay, sigma_init=sigma_init, fixed=delays == "fixed",
                       conv_algorithm=conv_algorithm, param_dtype=param_dtype, rngs=rngs)


class LayerTrace(NamedTuple):
  """What one layer computed, time-major; the readout layer has no BatchNorm and its spikes never fire."""
  delay_out: jax.Array
  bn_out: Optional[jax.Array]
  spikes: jax.Array
  v_seq: jax.Array


class HiddenLayer(nnx.Module):
  """Delay synapses -> BatchNorm over time and batch -> LIF -> dropout with one mask per (sample, neuron)."""

  def __init__(self, in_features: int, out_features: int, *, delays: str, max_delay: int,
               sigma_init: Optional[float], tau: float, v_threshold: float, alpha: float, dropout: float,
               bn_axis_name: Optional[str], conv_algorithm: str, param_dtype: Any, rngs: nnx.Rngs):
    self.synapses = _synapses(in_features, out_features, delays=delays, max_delay=max_delay, sigma_init=sigma_init,
                              conv_algorithm=conv_algorithm, param_dtype=param_dtype, rngs=rngs)
    self.norm = layers.BatchNorm(out_features, axis_name=bn_axis_name, param_dtype=param_dtype)
    self.neuron = lif.LIF(tau, v_threshold=v_threshold, alpha=alpha)
    self.dropout = nnx.Dropout(dropout, broadcast_dims=(0,), rngs=rngs)  # (T, B, H): one mask over time

  def __call__(self, x: jax.Array) -> tuple[jax.Array, LayerTrace]:
    delay_out = self.synapses(x)
    bn_out = self.norm(delay_out)
    spikes, v_seq = self.neuron(bn_out)
    return self.dropout(spikes), LayerTrace(delay_out, bn_out, spikes, v_seq)


class SnnDelays(nnx.Module):
  """The SNN-delays network: (B, T, num_inputs) -> output membrane trace u (B, T_final, num_outputs).

  Args:
    num_inputs, num_outputs: input channels (140 for SHD/SSC/GSC) and classes.
    hidden_features, num_hidden_layers: width H and depth L of the hidden stack (SHD: 256, 2; SSC/GSC: 512, 3).
    max_delay: K, kernel length in steps, odd (SHD 25, SSC/GSC 31).
    tau: LIF time constant in steps, > 1 (SHD 1.0050000001, SSC/GSC 1.5000000001).
    v_threshold, alpha: hidden neurons' threshold and ATan surrogate slope.
    dropout: drop probability of hidden spikes (SHD 0.4, SSC/GSC 0.25).
    sigma_init: initial raw sigma of the delay kernels (default K // 2).
    delays: 'learned' (the method), 'fixed' (random integer delays, never learned) or 'none' (per-step dense
      synapses, no padding: T_final = T); the paper's ablations.
    bn_axis_name: a named axis (the trainer's 'data') to synchronise BatchNorm statistics across devices.
    conv_algorithm: of the delay convolutions, ``dcls_jax.conv`` ('auto', 'direct', 'fft', 'dft').
    param_dtype: of parameters and statistics (float64 for the reference fixtures).
    rngs: 'params' initialises, 'dropout' draws the masks.
  """

  def __init__(self, num_inputs: int, num_outputs: int, *, hidden_features: int = 256, num_hidden_layers: int = 2,
               max_delay: int = 25, tau: float = 1.0050000001, v_threshold: float = 1.0, alpha: float = 5.0,
               dropout: float = 0.4, sigma_init: Optional[float] = None, delays: str = "learned",
               bn_axis_name: Optional[str] = None, conv_algorithm: str = "auto", param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    for name, value, minimum in (("num_inputs", num_inputs, 1), ("num_outputs", num_outputs, 1),
                                 ("hidden_features", hidden_features, 1), ("num_hidden_layers", num_hidden_layers, 0)):
      _check_int(value, name, minimum)
    if not 0 <= dropout < 1:
      raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if delays not in DELAYS:
      raise ValueError(f"delays={delays!r}: expected one of {DELAYS}.")
    common = dict(delays=delays, max_delay=max_delay, sigma_init=sigma_init, conv_algorithm=conv_algorithm,
                  param_dtype=param_dtype, rngs=rngs)
    widths = [num_inputs] + [hidden_features] * num_hidden_layers
    self.layers = nnx.List([
        HiddenLayer(w_in, w_out, tau=tau, v_threshold=v_threshold, alpha=alpha, dropout=dropout,
                    bn_axis_name=bn_axis_name, **common)
        for w_in, w_out in zip(widths[:-1], widths[1:])])
    self.output_synapses = _synapses(widths[-1], num_outputs, **common)
    self.output_neuron = lif.LIF(tau, v_threshold=lif.READOUT_THRESHOLD, alpha=alpha)
    self.num_inputs = num_inputs

  def run(self, x: jax.Array) -> tuple[jax.Array, list[LayerTrace]]:
    """-> (u (B, T_final, num_outputs), one ``LayerTrace`` per layer, readout last)."""
    if x.ndim != 3 or x.shape[-1] != self.num_inputs:
      raise ValueError(f"x must be (B, T, {self.num_inputs}) batch-major, got shape {x.shape}")
    h = jnp.swapaxes(x, 0, 1)
    traces = []
    for layer in self.layers:
      h, trace = layer(h)
      traces.append(trace)
    delay_out = self.output_synapses(h)
    spikes, u = self.output_neuron(delay_out)
    traces.append(LayerTrace(delay_out, None, spikes, u))
    return jnp.swapaxes(u, 0, 1), traces

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.run(x)[0]

  def synapses(self) -> list[DelaySynapses | InstantSynapses]:
    """The synapse layers, input first."""
    return [layer.synapses for layer in self.layers] + [self.output_synapses]



# ---- schedules of the recipe -------------------------------------------------------------------------

def optimizer_config(*, max_learning_rate: float, l2_weight_decay: float, positions_learning_rate: float,
                     onecycle: Optional[Mapping[str, Any]] = None, positions_end_learning_rate: float = 0.0,
                     positions_betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
                     ) -> ml_collections.ConfigDict:
  """``config.optimizer`` and ``config.schedule`` (``train/optimizers.py``) of the reference's two optimisers.

  Weights (DCLS weights, BatchNorm scale/bias): Adam with L2 on DCLS weights only, torch ``OneCycleLR(max_lr)``
  per epoch (``onecycle``: its other arguments, torch defaults otherwise) cycling beta1; sigmas frozen (lr x 0).
  Positions: Adam, cosine annealing to ``positions_end_learning_rate`` per epoch; clamped after every step.
  """
  return ml_collections.ConfigDict(dict(
      optimizer=dict(name="adam", learning_rate=max_learning_rate, b2=0.999, eps=eps,
                     l2_weight_decay=l2_weight_decay,
                     dcls_sigma_lr_mult=0.0, clamp_positions=True,
                     positions=dict(name="adam", learning_rate=positions_learning_rate, b1=positions_betas[0],
                                    b2=positions_betas[1], eps=eps,
                                    schedule=dict(name="warmup_cosine", per_epoch=True,
                                                  end_learning_rate=positions_end_learning_rate))),
      schedule=dict(name="onecycle", per_epoch=True, **dict(onecycle or {}))))


# ---- the reference (torch state_dict names, fixtures) --------------------------------------------------

_SYNAPSE_NAMES = {"weight": "weight", "P": "positions", "SIG": "sigmas"}
_NORM_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var",
               "num_batches_tracked": "num_batches_tracked"}


def reference_modules(model: SnnDelays) -> dict[int, tuple[nnx.Module, dict[str, str]]]:
  """Index i of the reference's ``nn.Sequential`` ``model.{i}`` -> (our module, {torch name: our name}).

  Delay layers are 0, 4, ..., 4L (the last is the readout's), BatchNorms 1, 5, ...; LIF and dropout have no state.
  """
  modules = {}
  for l, layer in enumerate(model.layers):
    modules[4 * l] = (layer.synapses, _SYNAPSE_NAMES)
    modules[4 * l + 1] = (layer.norm, _NORM_NAMES)
  modules[4 * len(model.layers)] = (model.output_synapses, _SYNAPSE_NAMES)
  return modules


def _reference_variables(model: SnnDelays):
  for index, (module, names) in reference_modules(model).items():
    for torch_name, name in names.items():
      yield f"model.{index}.{torch_name}", getattr(module, name)


def load_reference_state(model: SnnDelays, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state_dict (``model.{i}.{name}`` arrays) into ``model``."""
  expected = dict(_reference_variables(model))
  given = set(state_dict)
  if given != set(expected):
    raise ValueError(f"state_dict must hold exactly {sorted(expected)}; missing {sorted(set(expected) - given)}, "
                     f"unexpected {sorted(given - set(expected))}")
  for name, variable in expected.items():
    value = np.asarray(state_dict[name])
    if value.shape != variable.shape:
      raise ValueError(f"state_dict[{name!r}] must have shape {variable.shape}, got {value.shape}")
    variable[...] = jnp.asarray(value, variable.dtype)


def reference_state(model: SnnDelays) -> dict[str, np.ndarray]:
  """``model``'s variables under the reference's state_dict names."""
  return {name: np.asarray(variable[...]) for name, variable in _reference_variables(model)}


def model_from_reference(config: Mapping[str, Any], **kwargs) -> SnnDelays:
  """An ``SnnDelays`` with the sizes and constants of a reference config (a fixture's ``meta.config``)."""
  if (config.get("kernel_count", 1) != 1 or config.get("DCLSversion", "gauss") != "gauss" or config.get("bias")
      or not config.get("use_batchnorm", True) or config.get("spiking_neuron_type", "lif") != "lif"
      or config.get("loss", "sum") != "sum" or config.get("stateful_synapse")):
    raise ValueError("only the SNN-delays best-config model is supported: kernel_count 1, DCLSversion 'gauss', "
                     "no bias, BatchNorm, LIF neurons, loss 'sum', no stateful synapse")
  if config["left_padding"] != config["max_delay"] - 1 or config["right_padding"] != (config["max_delay"] - 1) // 2:
    raise ValueError(f"padding ({config['left_padding']}, {config['right_padding']}) must be (K - 1, (K - 1) // 2) "
                     f"for max_delay K = {config['max_delay']}")
  return SnnDelays(config["n_inputs"], config["n_outputs"], hidden_features=config["n_hidden_neurons"],
                   num_hidden_layers=config["n_hidden_layers"], max_delay=config["max_delay"],
                   tau=config["init_tau"], v_threshold=config["v_threshold"], alpha=config["alpha"],
                   dropout=config["dropout_p"], sigma_init=config["sigInit"], rngs=nnx.Rngs(config.get("seed", 0)),
                   **kwargs)


def _fixture_outputs(u_time_major, traces: list[LayerTrace], prefix: str = "output") -> dict[str, jax.Array]:
  out = {f"{prefix}/u": u_time_major}
  for l, trace in enumerate(traces):
    out[f"{prefix}/delay_out/model.{4 * l}"] = trace.delay_out
    if trace.bn_out is not None:  # a hidden layer
      out[f"{prefix}/bn_out/model.{4 * l + 1}"] = trace.bn_out
      out[f"{prefix}/spikes/model.{4 * l + 2}"] = trace.spikes
      out[f"{prefix}/v_seq/model.{4 * l + 2}"] = trace.v_seq
  return out


def run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``snn_delays``: the whole network in the fixture's mode, its readout and loss; in train mode also the
  gradients, the BatchNorm buffers and two training iterations with the recipe's optimisers (epoch 0)."""
  config, dtype = meta["config"], jnp.dtype(meta["dtype"])
  module = model_from_reference(config, param_dtype=dtype, conv_algorithm="direct")
  state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
  load_reference_state(module, state)
  x = jnp.swapaxes(jnp.asarray(arrays["input/x"], dtype), 0, 1)
  batch = {"label": jnp.asarray(arrays["input/y"])}
  task = tasks.snn_delays()
  train = meta["mode"] == "train"
  module.train() if train else module.eval()
  kernels_used = {f"output/kernel/model.{4 * l}": s.kernel() for l, s in enumerate(module.synapses())}
  model, params, batch_stats = step_lib.Model.split(module)

  def loss_fn(params, batch_stats):
    merged = model.module(params, batch_stats)
    u, traces = merged.run(x)
    loss, metrics = task.loss(u, batch)
    return loss, (u, traces, metrics, nnx.to_pure_dict(nnx.state(merged, nnx.BatchStat)))

  loss_and_grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  if train:
    (loss, (u, traces, metrics, new_stats)), grads = loss_and_grads(params, batch_stats)
  else:
    loss, (u, traces, metrics, _) = jax.jit(loss_fn)(params, batch_stats)
  y_hat = tasks.summed_softmax(u)
  out = {**_fixture_outputs(jnp.swapaxes(u, 0, 1), traces), **kernels_used,
         "output/y_hat": y_hat, "output/loss": loss, "output/pred": jnp.argmax(y_hat, -1)}
  if not train:
    out["output/accuracy"] = metrics["accuracy"]
    out.update({f"output/P_rounded/model.{4 * l}": s.rounded_positions() for l, s in enumerate(module.synapses())})
    return {k: np.asarray(v) for k, v in out.items()}

  out.update(_reference_outputs(model.module(grads, batch_stats), "grad", params_only=True))
  out.update(_reference_outputs(model.module(params, new_stats), "output", batch_stats_only=True))
  steps = 2
  tx, _ = optimizers.build_optimizer(
      optimizer_config(max_learning_rate=config["max_lr_w"], l2_weight_decay=config["weight_decay"],
                       positions_learning_rate=config["lr_pos"]),
      steps_per_epoch=steps, total_steps=steps * config["epochs"],
      position_limits=dcls_optim.dcls_position_limits(module))
  opt_state, losses = tx.init(params), []
  for _ in range(steps):  # forward, backward, both Adam steps, clamp: iterations of epoch 0
    (loss, (*_, batch_stats)), grads = loss_and_grads(params, batch_stats)
    updates, opt_state = jax.jit(tx.update)(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    losses.append(loss)
  out["output/after_steps/loss"] = jnp.stack(losses)
  out.update(_reference_outputs(model.module(params, batch_stats), "output/after_steps"))
  return {k: np.asarray(v) for k, v in out.items()}


def _reference_outputs(module: SnnDelays, prefix: str, *, params_only: bool = False,
                       batch_stats_only: bool = False) -> dict[str, np.ndarray]:
  """``{prefix}/{torch name}`` of a module's Params (``params_only``, SIG excluded: frozen), BatchStats or both."""
  out = {}
  for name, variable in _reference_variables(module):
    if params_only and (not isinstance(variable, nnx.Param) or name.endswith(".SIG")):
      continue
    if batch_stats_only and not isinstance(variable, nnx.BatchStat):
      continue
    out[f"{prefix}/{name}"] = np.asarray(variable[...])
  return out


def run_delay_layer_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``snn_delays/delay_layer``: one ``DelaySynapses`` on a channel-first (B, C_in, T) input, in train mode
  (output, kernel, loss = sum(y R) and its gradients) and in eval mode (rounded positions, kernel, output)."""
  config, dtype = meta["config"], jnp.dtype(meta["dtype"])
  if (config.get("kernel_count", 1) != 1 or config.get("groups", 1) != 1 or config.get("bias")
      or config.get("version", "gauss") != "gauss" or config.get("stride", 1) != 1 or config.get("padding", 0) != 0):
    raise ValueError("only the SNN-delays Dcls1d is supported: kernel_count 1, groups 1, no bias, gauss, stride 1, "
                     "padding 0 (the model pads)")
  layer = DelaySynapses(config["in_channels"], config["out_channels"], config["dilated_kernel_size"],
                        conv_algorithm="direct", param_dtype=dtype, rngs=nnx.Rngs(0))
  for torch_name, name in _SYNAPSE_NAMES.items():
    getattr(layer, name)[...] = jnp.asarray(arrays[f"state/{torch_name}"], dtype)
  x = jnp.asarray(arrays["input/x"], dtype)
  cotangent = jnp.asarray(arrays["input/R"], dtype)

  def apply(layer, x):  # (B, C, T) -> (B, C_out, T_out), the reference layer's layout
    return jnp.transpose(layer(jnp.transpose(x, (2, 0, 1))), (1, 2, 0))

  def loss_fn(params, x):
    y = apply(nnx.merge(graphdef, params, rest), x)
    return jnp.sum(y * cotangent), y

  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  (loss, y), (grads, grad_x) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, x)
  out = {"output/y": y, "output/kernel": layer.kernel(), "output/loss": loss, "grad/weight": grads["weight"][...],
         "grad/P": grads["positions"][...], "grad/x": grad_x}
  layer.eval()
  out.update({"output/eval/P_rounded": layer.rounded_positions(), "output/eval/kernel": layer.kernel(),
              "output/eval/y": apply(layer, x)})
  return {k: np.asarray(v) for k, v in out.items()}


def _torch_call_arguments(text: str, scheduler: str) -> dict[str, str]:
  """``'Name(a=1, b=c) defaults: d=2'`` -> {'a': '1', 'b': 'c', 'd': '2'}; ValueError unless it names scheduler."""
  if not isinstance(text, str) or not text.startswith(f"{scheduler}("):
    raise ValueError(f"expected a {scheduler}(...) description, got {text!r}")
  return dict(re.findall(r"(\w+)=([^,\s)]+)", text))


def _onecycle_arguments(config: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
  """(max_lr, our onecycle schedule fields) from a schedule file's ``scheduler_w`` description."""
  args = _torch_call_arguments(config["scheduler_w"], "OneCycleLR")
  if args.get("anneal_strategy", "cos") != "cos" or args.get("three_phase", "False") != "False":
    raise ValueError(f"scheduler_w: only anneal_strategy=cos, three_phase=False is supported, got {args}")
  if args.get("total_steps") != "epochs":
    raise ValueError(f"scheduler_w: total_steps must be 'epochs' (stepped per epoch), got {args.get('total_steps')}")
  max_lr = args["max_lr"]
  max_lr = config[max_lr] if max_lr in config else float(max_lr)
  fields = {name: float(args[name]) for name in ("pct_start", "div_factor", "final_div_factor", "base_momentum",
                                                 "max_momentum") if name in args}
  if "cycle_momentum" in args:
    fields["cycle_momentum"] = args["cycle_momentum"] == "True"
  return max_lr, fields


def run_schedules_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``snn_delays/schedules``: every per-epoch column of a schedule file, from its ``config``, with the
  project's optimiser schedules (``train.optimizers``) and ``sigma_schedule``."""
  config = meta["config"]
  epochs = config["epochs"]
  max_lr, onecycle = _onecycle_arguments(config)
  cosine = _torch_call_arguments(config["scheduler_pos"], "CosineAnnealingLR")
  if cosine.get("T_max") != "epochs":
    raise ValueError(f"scheduler_pos: T_max must be 'epochs', got {cosine.get('T_max')}")
  recipe = optimizer_config(max_learning_rate=max_lr, l2_weight_decay=config["weight_decay_w"],
                            positions_learning_rate=config["lr_pos"], onecycle=onecycle,
                            positions_end_learning_rate=float(cosine.get("eta_min", 0.0)),
                            positions_betas=tuple(config["betas_pos"]), eps=config["adam_eps"])
  half = config["max_delay"] // 2
  _, schedules = optimizers.build_optimizer(recipe, steps_per_epoch=1, total_steps=epochs, position_limits=half)
  epoch = jnp.asarray(arrays["input/epoch"])
  sigma = dcls_optim.sigma_schedule(epoch, sigma_init=config["sigInit"], final_epoch=config["final_epoch"])
  constant = lambda value: jnp.full(epoch.shape, value, float)
  columns = {"lr_w": jax.vmap(schedules["lr"])(epoch), "beta1_w": jax.vmap(schedules["b1"])(epoch),
             "beta2_w": constant(recipe.optimizer.b2),
             "lr_pos": jax.vmap(schedules["lr_positions"])(epoch),
             "beta1_pos": constant(recipe.optimizer.positions.b1), "beta2_pos": constant(recipe.optimizer.positions.b2),
             "sigma_raw": sigma, "sigma_eff": sigma + kernels.GAUSS_SIGMA_OFFSET}
  return {f"output/{name}": np.asarray(values) for name, values in columns.items()}
