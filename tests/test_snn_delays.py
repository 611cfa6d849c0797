"""SNN-delays: LIF neurons, delay synapses, sequence BatchNorm, the network, its task, and reference parity."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dcls_jax import optim as dcls_optim
from models import lif
from models import parity
from models import registry
from models import snn_delays
from train import step as step_lib
from train import tasks

CURRENTS = jnp.array([0.6, 0.6, 0.6, 1.2, 0.0, 2.0, 0.5, 0.9])


# ---- LIF ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau, spikes, v_seq", [
    (1.0050000001, [0, 0, 0, 1, 0, 1, 0, 0], [0.6, 0.602985, 0.603, 0, 0, 0, 0.5, 0.902488]),
    (1.5000000001, [0, 0, 0, 1, 0, 1, 0, 1], [0.6, 0.8, 0.866667, 0, 0, 0, 0.5, 0]),
])
def test_lif_matches_the_reference_test_vectors(tau, spikes, v_seq):
  got_spikes, got_v = lif.lif_multistep(CURRENTS, tau=tau)
  np.testing.assert_array_equal(got_spikes, spikes)
  np.testing.assert_allclose(got_v, v_seq, atol=1e-6)


def test_lif_threshold_tie_spikes_and_resets_to_zero():
  spikes, v_seq = lif.lif_multistep(jnp.array([1.0, 0.3]), tau=2.0)
  np.testing.assert_array_equal(spikes, [1, 0])
  np.testing.assert_allclose(v_seq, [0.0, 0.3])


def test_lif_surrogate_gradient_is_atan_and_reset_is_detached():
  x = jnp.array([1.2, 0.0])
  d_spike = jax.grad(lambda x: lif.lif_multistep(x, tau=2.0, alpha=5.0)[0][0])(x)
  np.testing.assert_allclose(d_spike, [2.5 / (1 + (math.pi / 2 * 5.0 * 0.2)**2), 0.0], rtol=1e-6)
  # v[0] = H (1 - stop_gradient(S)) = 0 after the spike: no gradient flows through the reset.
  d_v = jax.grad(lambda x: lif.lif_multistep(x, tau=2.0)[1][0])(x)
  np.testing.assert_array_equal(d_v, [0.0, 0.0])
  np.testing.assert_allclose(jax.grad(lambda z: lif.spike(z, 5.0))(0.0), 2.5)


def test_readout_neuron_never_fires_and_integrates():
  spikes, u = lif.lif_multistep(jnp.array([3.0, 1.0]), tau=2.0, v_threshold=lif.READOUT_THRESHOLD)
  np.testing.assert_array_equal(spikes, [0, 0])
  np.testing.assert_allclose(u, [3.0, 2.5])


def test_lif_eval_charge_equals_train_charge():
  train, eval_ = (lif.lif_multistep(CURRENTS, tau=1.5, eval_charge=e)[1] for e in (False, True))
  np.testing.assert_allclose(train, eval_, atol=1e-7)


# ---- delay synapses ----------------------------------------------------------------------------------

def one_synapse(position: float, max_delay: int = 7, sigma: float = 0.0) -> snn_delays.DelaySynapses:
  layer = snn_delays.DelaySynapses(1, 1, max_delay, sigma_init=sigma, rngs=nnx.Rngs(0))
  layer.weight[...] = jnp.ones_like(layer.weight[...])
  layer.positions[...] = jnp.full_like(layer.positions[...], position)
  return layer


@pytest.mark.parametrize("position", [3, 0, -3])
@pytest.mark.parametrize("deterministic", [False, True])
def test_impulse_at_t_appears_at_t_plus_delay(position, deterministic):
  layer = one_synapse(position)
  layer.deterministic = deterministic
  x = jnp.zeros((6, 1, 1)).at[2].set(1.0)
  y = layer(x)[:, 0, 0]
  delay = 3 - position
  assert y.shape == (6 + 3,)
  assert int(jnp.argmax(y)) == 2 + delay
  assert float(layer.delays()[0, 0]) == delay


def test_eval_rounds_half_to_even_clamps_and_uses_one_tap():
  layer = snn_delays.DelaySynapses(1, 5, 7, rngs=nnx.Rngs(0))
  layer.positions[...] = jnp.array([2.5, -2.5, 3.5, -0.5, -3.4]).reshape(1, 5, 1, 1)
  np.testing.assert_array_equal(layer.rounded_positions().ravel(), [2, -2, 3, 0, -3])
  layer.eval()
  kernel = layer.kernel()[:, 0]
  weight = layer.weight[...][:, 0, 0]
  np.testing.assert_array_equal(jnp.argmax(jnp.abs(kernel), -1), [5, 1, 6, 3, 0])
  np.testing.assert_allclose(jnp.sum(kernel, -1), weight / (1 + 1e-7), rtol=1e-6)
  assert int(jnp.sum(kernel != 0)) == 5


def test_synapse_init_is_the_references():
  layer = snn_delays.DelaySynapses(24, 300, 9, rngs=nnx.Rngs(1))
  bound = math.sqrt(6 / 24)
  assert float(jnp.max(jnp.abs(layer.weight[...]))) <= bound
  positions = layer.positions[...]
  assert float(positions.min()) == -4 and float(positions.max()) <= 4
  assert 0.05 < float(jnp.mean(positions == -4)) < 0.2  # U(-5, 4) clamped: a bump at the longest delay
  np.testing.assert_array_equal(layer.sigmas[...], 4.0)


# ---- network and task --------------------------------------------------------------------------------

def tiny_model(**kwargs) -> snn_delays.SnnDelays:
  config = dict(name="snn_delays", num_inputs=6, num_outputs=3, hidden_features=8, num_hidden_layers=2,
                max_delay=5, tau=1.5, dropout=0.0)
  return registry.create_model({**config, **kwargs}, rngs=nnx.Rngs(0))


def test_network_shapes_modes_and_parameter_names():
  model = tiny_model()
  x = (jax.random.uniform(jax.random.key(0), (2, 10, 6)) < 0.3).astype(jnp.float32)
  assert model(x).shape == (2, 10 + 3 * 2, 3)
  model.eval()
  assert model(x).shape == (2, 16, 3)
  names = {dcls_optim.param_path(path)[-1] for path, _ in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]}
  assert names == {"weight", "positions", "sigmas", "scale", "bias"}
  assert len(dcls_optim.dcls_position_limits(model)) == 3
  assert len(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["layers"]) == 2


def test_fixed_delays_are_random_integers_that_never_move():
  model = tiny_model(delays="fixed")
  x = (jax.random.uniform(jax.random.key(0), (2, 10, 6)) < 0.3).astype(jnp.float32)
  split, params, batch_stats = step_lib.Model.split(model)
  positions = params["layers"][0]["synapses"]["positions"]
  np.testing.assert_array_equal(positions, jnp.round(positions))
  assert len(np.unique(positions)) > 1

  def loss(p):
    return jnp.sum(split.apply(p, batch_stats, x, train=True, dropout_key=jax.random.key(0))[0] ** 2)
  grads = jax.grad(loss)(params)["layers"][0]["synapses"]
  assert not np.any(grads["positions"]) and np.any(grads["weight"])
  train_out = model(x)
  model.eval()
  model.layers[0].norm.use_running_average = False  # same BatchNorm mode: the kernels alone differ, and do not
  model.layers[1].norm.use_running_average = False
  np.testing.assert_allclose(model(x), train_out, rtol=1e-6, atol=1e-6)


def test_outputs_and_gradients_do_not_depend_on_the_conv_algorithm():
  """'auto' takes the DFT matmuls on CPU (the benchmark's speed); they train the same network as 'direct'."""
  x = (jax.random.uniform(jax.random.key(0), (3, 12, 6)) < 0.3).astype(jnp.float32)

  def output_and_grads(conv_algorithm):
    split, params, batch_stats = step_lib.Model.split(tiny_model(conv_algorithm=conv_algorithm))

    def loss(p):
      out = split.apply(p, batch_stats, x, train=True, dropout_key=jax.random.key(0))[0]
      return jnp.sum(jnp.sin(out)), out
    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grads

  with jax.default_matmul_precision("highest"):
    expected = output_and_grads("direct")
    for algorithm in ("dft", "fft", "auto"):
      for a, e in zip(jax.tree.leaves(output_and_grads(algorithm)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(e).max())))


def test_no_delays_keeps_the_sequence_length_and_has_no_positions():
  model = tiny_model(delays="none")
  x = jnp.ones((2, 10, 6))
  assert model(x).shape == (2, 10, 3)
  assert not dcls_optim.dcls_position_limits(model)
  with pytest.raises(ValueError, match="delays='some'"):
    tiny_model(delays="some")


def test_dropout_keeps_one_mask_per_sequence():
  model = tiny_model(dropout=0.5)
  dropped = model.layers[0].dropout(jnp.ones((7, 4, 8)))
  np.testing.assert_array_equal(dropped, jnp.broadcast_to(dropped[:1], dropped.shape))
  assert set(np.unique(dropped)) == {0.0, 2.0}


def test_task_sums_per_step_softmax_then_cross_entropy():
  trace = jnp.zeros((1, 4, 2)).at[0, :, 0].set(100.0)  # class 0 wins every step: y_hat = (4, 0)
  np.testing.assert_allclose(tasks.summed_softmax(trace), [[4.0, 0.0]], atol=1e-6)
  loss, metrics = tasks.snn_delays().loss(trace, {"label": jnp.array([0])})
  np.testing.assert_allclose(loss, math.log(1 + math.exp(-4.0)), rtol=1e-5)
  assert float(metrics["accuracy"]) == 1.0
  sums = tasks.create_task({"name": "snn_delays"}).eval_sums(trace, {"label": jnp.array([1]), "mask": jnp.ones(1)})
  assert float(sums["accuracy"]) == 0.0 and float(sums["count"]) == 1.0


def test_sigma_schedule_and_with_sigma():
  sigma = dcls_optim.sigma_schedule(jnp.arange(6), sigma_init=12.0, final_epoch=3)
  alpha = (0.23 / 12) ** (1 / 3)
  np.testing.assert_allclose(sigma, [12, 12 * alpha, 12 * alpha**2, 0.23, 0.23, 0.23], rtol=1e-6)
  np.testing.assert_allclose(dcls_optim.sigma_schedule(5, sigma_init=0.1, final_epoch=3), 0.1)
  params = dcls_optim.with_sigmas(nnx.to_pure_dict(nnx.state(tiny_model(), nnx.Param)), 0.5)
  np.testing.assert_array_equal(params["output_synapses"]["sigmas"], 0.5)
  assert not np.all(params["output_synapses"]["weight"] == 0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_delay=4), "max_delay must be odd"),
    (dict(dropout=1.0), "dropout"),
    (dict(tau=1.0), "tau must be > 1"),
    (dict(hidden_features=0), "hidden_features"),
    (dict(bogus=1), "config.model"),
])
def test_bad_constructor_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tiny_model(**kwargs)


def test_bad_inputs_raise():
  model = tiny_model()
  with pytest.raises(ValueError, match=r"\(B, T, 6\)"):
    model(jnp.zeros((2, 10, 5)))
  with pytest.raises(ValueError, match="time-major"):
    model.output_synapses(jnp.zeros((10, 2, 3)))
  with pytest.raises(ValueError, match="missing"):
    snn_delays.load_reference_state(model, {"model.0.weight": np.zeros((8, 6, 1))})


# ---- reference parity ----------------------------------------------------------------------------------

def test_tolerance_groups_resolve_globs_then_names():
  tolerances = {"output/u, BN running stats": {"atol": 1}, "output/after_steps/*": {"atol": 2},
                "num_batches_tracked, output/pred": "exact"}
  assert parity.tolerance(tolerances, "output/model.5.running_var") == {"atol": 1}
  assert parity.tolerance(tolerances, "output/after_steps/model.1.running_var") == {"atol": 2}
  assert parity.tolerance(tolerances, "output/model.1.num_batches_tracked") == "exact"
  assert parity.tolerance(tolerances, "grad/x") is None


