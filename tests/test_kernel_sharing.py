"""Kernel sharing: ConvMixer and the CIFAR SE-ResNet, shared and unshared; their reference tables and checkpoints."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dcls_jax import sharing
from models import convmixer
from models import kernel_sharing_io as ks
from models import parity
from models import seresnet
from tests import test_parity_fixtures

FIXTURES = test_parity_fixtures.fixtures("ks_convmixer") + test_parity_fixtures.fixtures("ks_seresnet")
DCLS = dict(kind="dcls", kernel_size=5, kernel_count=3, version="gauss", share_positions=False)


def rngs(seed=0) -> nnx.Rngs:
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))  # compiles far faster than threefry for each kernel shape


def tiny(arch="convmixer", share=True, seed=0, **kwargs):
  """A 2-block ConvMixer (8 channels, k 3) or an SE-ResNet (n 2, widths 8-12-16, r 4), 5 classes."""
  if arch == "convmixer":
    if "dwconv" not in kwargs:
      kwargs.setdefault("kernel_size", 3)
    return convmixer.ConvMixer(8, 2, 5, patch_size=2, share_kernels=share, rngs=rngs(seed), **kwargs)
  kwargs = dict(n_size=2, widths=(8, 12, 16), stem_width=4, reduction=4) | kwargs
  return seresnet.SEResNet(5, share_stages=(share,) * 3, rngs=rngs(seed), **kwargs)


def abstract(*args, **kwargs):
  """``tiny`` without initialisation: enough for its structure and parameter counts."""
  return nnx.eval_shape(lambda: tiny(*args, **kwargs))


def images(n=2, size=8, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def num_params(model) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def variables(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))


def loss_and_grads(model):
  labels = jnp.array([1, 3])

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(images()), labels).mean()

  return nnx.jit(nnx.value_and_grad(loss_fn))(model)


def get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


# ---- one leaf per shared tensor ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch, kwargs, groups", [
    ("convmixer", {}, [[("blocks", b, conv, leaf) for b in range(2)]
                       for conv in ("dwconv", "pwconv") for leaf in ("kernel", "bias")]),
    ("convmixer", dict(dwconv=DCLS), [[("blocks", b, "dwconv", leaf) for b in range(2)]
                                      for leaf in ("weight", "positions", "sigmas", "bias")]
     + [[("blocks", b, "pwconv", leaf) for b in range(2)] for leaf in ("kernel", "bias")]),
    # Per stage: conv2 of block 0, conv1 and conv2 of block 1; the first conv1 changes width (and stride).
    ("seresnet", {}, [[("stages", s, 0, "conv2", "kernel"), ("stages", s, 1, "conv1", "kernel"),
                       ("stages", s, 1, "conv2", "kernel")] for s in range(3)]),
])
def test_shared_tensors_are_one_leaf_used_by_every_layer_of_their_group(arch, kwargs, groups):
  shared, unshared = abstract(arch, **kwargs), abstract(arch, share=False, **kwargs)
  assert sorted(map(sorted, sharing.aliases(shared))) == sorted(map(sorted, groups))
  assert sharing.aliases(unshared) == []
  assert len(jax.tree.leaves(nnx.state(shared))) == (len(jax.tree.leaves(nnx.state(unshared)))
                                                    - sum(len(group) - 1 for group in groups))


def test_first_conv_of_a_stage_joins_the_group_when_the_width_does_not_change():
  model = abstract("seresnet", widths=(4, 8, 12))  # stem width 4 = widths[0]: layer1.0 keeps width and stride
  assert sorted(len(group) for group in sharing.aliases(model)) == [3, 3, 4]
  assert model.stages[0][0].conv1.kernel is model.stages[0][1].conv2.kernel
  assert model.stages[0][0].downsample is None and model.stages[1][0].downsample is not None


def test_dcls_convmixer_without_kernel_sharing_shares_its_positions_if_asked():
  model = abstract(share=False, dwconv=DCLS | dict(share_positions=True))
  assert sorted(map(sorted, sharing.aliases(model))) == [[("blocks", b, "dwconv", leaf) for b in range(2)]
                                                         for leaf in ("positions", "sigmas")]


@pytest.mark.parametrize("arch, kwargs", [
    ("convmixer", dict(kernel_size=3, dilation=2)),
    ("convmixer", dict(dwconv=DCLS)),
    ("seresnet", {}),
])
def test_shared_gradient_is_the_sum_of_the_per_use_gradients(arch, kwargs):
  shared = tiny(arch, **kwargs)
  unshared = abstract(arch, share=False, **kwargs)
  ks.load_torch_state(unshared, ks.to_torch(shared, variables(shared)))  # every use gets the shared values
  loss, grads = loss_and_grads(shared)
  unshared_loss, unshared_grads = loss_and_grads(unshared)
  np.testing.assert_allclose(loss, unshared_loss, rtol=1e-6)
  grads, unshared_grads = nnx.to_pure_dict(grads), nnx.to_pure_dict(unshared_grads)
  groups = sharing.aliases(shared, nnx.Param)
  assert groups
  for group in groups:  # group[0] is the path of the one leaf
    np.testing.assert_allclose(get(grads, group[0]), sum(get(unshared_grads, path) for path in group),
                               rtol=1e-4, atol=1e-6, err_msg=str(group))


def test_adamw_updates_and_decays_a_shared_kernel_once():
  lr, wd, eps = 0.1, 0.5, 1e-8
  shared = tiny()
  unshared = abstract(share=False)
  ks.load_torch_state(unshared, ks.to_torch(shared, variables(shared)))
  _, unshared_grads = loss_and_grads(unshared)
  summed = sum(get(nnx.to_pure_dict(unshared_grads), ("blocks", b, "dwconv", "kernel")) for b in range(2))
  kernel = shared.blocks[0].dwconv.kernel[...]
  optimizer = nnx.Optimizer(shared, optax.adamw(lr, eps=eps, weight_decay=wd), wrt=nnx.Param)
  _, grads = loss_and_grads(shared)
  optimizer.update(shared, grads)
  # Adam's first step moves by g / (|g| + eps); the decoupled decay subtracts lr * wd * kernel, once.
  expected = kernel - lr * (summed / (jnp.abs(summed) + eps) + wd * kernel)
  for block in shared.blocks:
    np.testing.assert_allclose(block.dwconv.kernel[...], expected, rtol=1e-5, atol=1e-6)
  adam = optimizer.opt_state[0]  # one moment per leaf: the shared kernel has one
  assert jax.tree.structure(nnx.to_pure_dict(adam.mu)) == jax.tree.structure(nnx.to_pure_dict(grads))


# ---- parameter counts (spec kernel_sharing.md sections 2.4 and 3.4) --------------------------------------

@pytest.mark.parametrize("depth, num_classes, share, count", [
    (16, 10, False, 1_409_034), (16, 10, True, 107_274), (16, 100, False, 1_432_164), (16, 100, True, 130_404),
    (8, 10, False, 706_570), (8, 10, True, 99_082),
])
def test_convmixer_256_parameter_counts(depth, num_classes, share, count):
  model = nnx.eval_shape(lambda: convmixer.ConvMixer(256, depth, num_classes, kernel_size=9, patch_size=1,
                                                     share_kernels=share, rngs=nnx.Rngs(0)))
  assert num_params(model) == count


def test_dcls_convmixer_shares_its_whole_sparse_kernel():
  def count(share):
    return num_params(nnx.eval_shape(lambda: convmixer.ConvMixer(
        256, 16, 10, dwconv=dict(kind="dcls", kernel_size=17, kernel_count=27, version="v1"), share_kernels=share,
        rngs=nnx.Rngs(0))))

  dense_dw = 9 * 9 * 256 + 256  # the reference's shared depthwise kernel and bias
  assert count(True) == 107_274 - dense_dw + 3 * 256 * 27 + 256  # weight and 2 positions per element, bias


@pytest.mark.parametrize("n_size, num_classes, share_stages, count", [
    (2, 10, (False,) * 3, 2_771_290), (2, 10, (False, True, True), 1_296_730), (2, 10, (True,) * 3, 1_223_002),
    (2, 100, (False,) * 3, 2_794_420), (2, 100, (True,) * 3, 1_246_132),
    (3, 10, (False,) * 3, 4_332_122), (3, 10, (False, True, True), 1_383_002), (3, 10, (True,) * 3, 1_235_546),
    (4, 10, (False,) * 3, 5_892_954), (4, 10, (False, True, True), 1_469_274), (4, 10, (True,) * 3, 1_248_090),
])
def test_seresnet_parameter_counts(n_size, num_classes, share_stages, count):
  model = nnx.eval_shape(lambda: seresnet.SEResNet(num_classes, n_size=n_size, share_stages=share_stages,
                                                   rngs=nnx.Rngs(0)))
  assert num_params(model) == count


# ---- layers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 2), (4, 2)])
def test_dilated_depthwise_conv_is_the_dilated_cross_correlation(kernel_size, dilation):
  conv = convmixer.DilatedDepthwiseConv(4, kernel_size, dilation=dilation, conv_algorithm="fft", rngs=rngs())
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 4))
  pad = dilation * (kernel_size - 1) // 2
  expected = jax.lax.conv_general_dilated(x, conv.kernel[...], (1, 1), [(pad, pad)] * 2, rhs_dilation=(dilation,) * 2,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4,
                                          precision="highest") + conv.bias[...]
  np.testing.assert_allclose(conv(x), expected, atol=1e-5)


def test_seresnet_dropout_acts_in_training_mode_only():
  model = tiny("seresnet", share=False, dropout=0.5)
  model.eval()
  np.testing.assert_array_equal(model(images()), model(images()))
  model.train()
  assert not np.allclose(model(images()), model(images()))


# ---- reference tables, fixtures and checkpoints ----------------------------------------------------------

@pytest.mark.skipif(not FIXTURES, reason="no ks_convmixer / ks_seresnet fixtures")
@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_fixture_state_round_trips_with_one_leaf_per_alias_group(path):
  meta, arrays = parity.load(path)
  state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
  build = ks.convmixer_from_reference if meta["arch"] == "ks_convmixer" else ks.seresnet_from_reference
  model = nnx.eval_shape(lambda: build(meta["config"]))
  ks.load_torch_state(model, state)
  groups = {frozenset(names) for names in meta["aliases"]}
  assert len(jax.tree.leaves(variables(model))) == len(state) - sum(len(group) - 1 for group in groups)
  back = ks.to_torch(model, variables(model))
  assert back.keys() == state.keys()
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("arch", ["convmixer", "seresnet"])
def test_pth_checkpoint_import(arch, tmp_path):
  torch = pytest.importorskip("torch")
  source = tiny(arch)
  source.eval()
  torch.save({"model": {name: torch.from_numpy(value.copy()) for name, value in
                        ks.to_torch(source, variables(source)).items()}}, tmp_path / "ckpt.pth")
  target = tiny(arch, seed=3)
  target.eval()
  ks.load_checkpoint(target, tmp_path / "ckpt.pth")
  np.testing.assert_array_equal(target(images()), source(images()))


def test_aliases_of_a_shared_tensor_must_agree():
  model = tiny()
  state = ks.to_torch(model, variables(model))
  with pytest.raises(ValueError, match=r"4.1.weight.* differs from .*3.1.weight"):
    ks.load_torch_state(model, state | {"4.1.weight": state["4.1.weight"] + 1})


# ---- bad configurations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=4), r"dilation \* \(kernel_size - 1\) must be even"),
    (dict(kernel_size=3, dilation=0), "dilation must be an int >= 1"),
    (dict(kernel_size=3, patch_size=0), "patch_size must be an int >= 1"),
    (dict(kernel_size=3, dwconv=DCLS), "kernel_size=3 and dwconv both given"),
    (dict(dwconv=DCLS, dilation=2), "DCLS depthwise conv learns its spacing"),
    (dict(dwconv=DCLS | dict(kernel_size=6)), "dwconv.kernel_size=6: a DCLS depthwise conv needs an odd size"),
    (dict(dwconv=dict(kind="dense")), "dwconv kind='dense'"),
])
def test_convmixer_rejects_bad_configs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    convmixer.ConvMixer(8, 2, 5, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=(8, 16)), r"expected 3 entries each"),
    (dict(widths=(8, 8, 16)), "must differ from the previous one"),
    (dict(reduction=16), "every width must be >= reduction"),
    (dict(n_size=0), "n_size must be an int >= 1"),
    (dict(dropout=1.0), r"dropout=1.0: expected a rate in \[0, 1\)"),
])
def test_seresnet_rejects_bad_configs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tiny("seresnet", **kwargs)


def test_seresnet_share_stages_must_be_three_bools():
  with pytest.raises(ValueError, match="expected 3 bools"):
    seresnet.SEResNet(5, widths=(8, 12, 16), reduction=4, share_stages=(1, 0, 0), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("change, match", [(dict(new_resnet=True), "new_resnet=True"),
                                           (dict(dropout=0.1), "dropout=0.1")])
def test_seresnet_fixture_runner_refuses_what_it_does_not_reproduce(change, match):
  config = dict(n_size=1, widths=[8, 12, 16], stem_width=4, num_classes=5, reduction=4, share_stages=[True] * 3,
                sync=True, new_resnet=False, dropout=0.0) | change
  with pytest.raises(ValueError, match=match):
    ks.run_seresnet_fixture(dict(config=config, mode="eval"), {"input/x": np.zeros((2, 3, 8, 8), np.float32)})
