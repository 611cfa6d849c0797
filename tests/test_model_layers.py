"""models.layers (PyTorch-semantics layers) and dcls_jax.sharing (one Variable used by several layers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from dcls_jax import sharing
from models import layers


# ---- BatchNorm ---------------------------------------------------------------------------------------

def test_batchnorm_running_statistics_follow_torch():
  x = jax.random.normal(jax.random.key(0), (3, 2, 4)) * 2 + 1
  norm = layers.BatchNorm(4)
  y = norm(x)
  rows = np.asarray(x).reshape(-1, 4)
  np.testing.assert_allclose(norm.mean[...], 0.1 * rows.mean(0), rtol=1e-5)
  np.testing.assert_allclose(norm.var[...], 0.9 + 0.1 * rows.var(0, ddof=1), rtol=1e-5)  # unbiased, as torch
  np.testing.assert_allclose(y, (x - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-5), atol=1e-5)
  assert int(norm.num_batches_tracked[...]) == 1
  norm.eval()
  np.testing.assert_allclose(norm(x), (x - norm.mean[...]) / jnp.sqrt(norm.var[...] + 1e-5), atol=1e-6)
  assert int(norm.num_batches_tracked[...]) == 1  # eval does not count


def test_batchnorm_synchronised_statistics_equal_the_global_ones():
  x = jax.random.normal(jax.random.key(1), (2, 5, 3, 4))  # 2 devices of (T=5, B=3)
  norm = layers.BatchNorm(4, axis_name="data")
  graphdef, state = nnx.split(norm)
  state = nnx.to_pure_dict(state)  # merged inside the trace, as the trainer does

  def device(x):
    module = nnx.merge(graphdef, state)
    return module(x), nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))

  y, stats = jax.vmap(device, axis_name="data")(x)
  whole = layers.BatchNorm(4)
  y_whole = whole(jnp.concatenate(list(x), axis=1))  # (T, 2 x 3, C): both devices' samples in one batch
  np.testing.assert_allclose(y, jnp.stack([y_whole[:, :3], y_whole[:, 3:]]), atol=1e-5)
  np.testing.assert_allclose(stats["var"][0], whole.var[...], rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [(dict(num_features=0), "num_features"),
                                           (dict(num_features=3, momentum=1.5), "momentum")])
def test_batchnorm_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    layers.BatchNorm(**kwargs)


# ---- sharing -----------------------------------------------------------------------------------------

class Convs(nnx.Module):
  def __init__(self, count: int, *, share: bool):
    rngs = nnx.Rngs(0)
    self.convs = nnx.List([nnx.Conv(3, 3, (3, 3), feature_group_count=3, rngs=rngs) for _ in range(count)])
    if share:
      sharing.tie(list(self.convs), "kernel")


def test_a_tied_kernel_is_one_leaf_whose_gradient_sums_over_its_uses():
  shared, separate = Convs(3, share=True), Convs(3, share=False)
  n_params = lambda m: sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert n_params(separate) - n_params(shared) == 2 * 3 * 3 * 3
  assert sharing.aliases(shared, nnx.Param) == [[("convs", 0, "kernel"), ("convs", 1, "kernel"),
                                                   ("convs", 2, "kernel")]]
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 3))

  def loss(model):
    return sum(jnp.sum(conv(x) ** 2) for conv in model.convs)

  separate_same = Convs(3, share=False)  # the same values, each use its own leaf
  for conv, used in zip(separate_same.convs, shared.convs):
    conv.kernel[...], conv.bias[...] = shared.convs[0].kernel[...], used.bias[...]
  grads = nnx.to_pure_dict(nnx.grad(loss)(shared))["convs"]
  per_use = nnx.to_pure_dict(nnx.grad(loss)(separate_same))["convs"]
  np.testing.assert_allclose(grads[0]["kernel"], sum(per_use[i]["kernel"] for i in range(3)), rtol=1e-5)
  assert set(grads[1]) == {"bias"}  # the other uses hold the same leaf


def test_tie_rejects_different_shapes_and_skips_absent_variables():
  rngs = nnx.Rngs(0)
  with pytest.raises(ValueError, match=r"layers\[1\]\.kernel"):
    sharing.tie([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs)], "kernel")
  assert sharing.tie([nnx.Linear(2, 3, use_bias=False, rngs=rngs)] * 2, "bias") is None


def dcls(width: int) -> dcls_nnx.DclsConv:
  return dcls_nnx.DclsConv(width, width, 3, (5, 5), feature_group_count=width, version="gauss", rngs=nnx.Rngs(0))


def test_growing_width_starts_new_positions_when_a_layer_is_wider_than_all_before():
  rule = sharing.GrowingWidth()
  layers_ = [rule.make(width, lambda w=width: dcls(w)) for width in (4, 4, 8, 8, 8)]
  assert layers_[1].positions is layers_[0].positions and layers_[1].sigmas is layers_[0].sigmas
  assert layers_[2].positions is not layers_[0].positions
  assert layers_[4].positions is layers_[2].positions
  assert layers_[4].weight is not layers_[2].weight  # weights stay per layer
  with pytest.raises(ValueError, match="width=4"):
    rule.make(4, lambda: dcls(4))


# ---- Conv --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride, groups, padding", [
    (7, 2, 4, 3), (3, 1, 4, 1), (1, 1, 1, 0), (3, 2, 8, "SAME")])
def test_conv_computes_what_nnx_conv_computes_with_the_same_parameters(kernel, stride, groups, padding):
  kwargs = dict(in_features=8, out_features=16, kernel_size=(kernel, kernel), strides=stride, padding=padding,
                feature_group_count=groups)
  ours, flax_conv = layers.Conv(**kwargs, rngs=nnx.Rngs(0)), nnx.Conv(**kwargs, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 11, 12, 8))
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(ours(x), flax_conv(x), atol=2e-5)


def test_conv_rejects_a_kernel_dilation():
  with pytest.raises(ValueError, match="kernel_dilation"):
    layers.Conv(2, 2, (3, 3), kernel_dilation=2, rngs=nnx.Rngs(0))
