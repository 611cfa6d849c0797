"""FastViT-SA (DCLS-Audio): sizes, position sharing, reparameterisation, PyTorch state dicts and checkpoints.

Parity with the reference fixtures (every output, gradient and reparameterised tensor) runs in
``tests/test_parity_fixtures.py``; here the fixtures only check the state-dict table.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import fastvit
from models import fastvit_io
from models import parity
from models import torch_table
from tests import test_parity_fixtures

FIXTURES = test_parity_fixtures.fixtures("dcls_audio_fastvit")
DWCONVS = {"conv": dict(kind="conv", kernel_size=3), "dcls": dict(kernel_size=5, kernel_count=3, version="gauss")}
VARIABLES = nnx.Any(nnx.Param, nnx.BatchStat)


def tiny(kind="dcls", seed=0, **kwargs) -> fastvit.FastViT:
  """A RepMixer stage (2 blocks, 8 channels), then RepCPE + an attention stage (1 block, 32 channels); 4 classes.

  Built abstractly and filled by numpy (nothing to compile): every float variable N(0, 0.5^2), BatchNorm variances
  U(0.5, 2), so that every branch matters.
  """
  kwargs = dict(layers=(2, 1), embed_dims=(8, 32), mlp_ratios=(2, 2), token_mixers=("repmixer", "attention"),
                pos_embs=(False, True), dwconv=DWCONVS[kind]) | kwargs
  model = nnx.eval_shape(lambda: fastvit.FastViT(4, rngs=nnx.Rngs(0), **kwargs))
  rng = np.random.default_rng(seed)

  def draw(path, like):
    if not jnp.issubdtype(like.dtype, jnp.floating):
      return np.zeros(like.shape, like.dtype)
    if path[-1].key == "var":
      return rng.uniform(0.5, 2.0, like.shape).astype(like.dtype)
    return (0.5 * rng.standard_normal(like.shape)).astype(like.dtype)

  state = nnx.state(model, VARIABLES)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


def spectrograms(n=2, seed=1):
  """(n, 8 mel, 64 frames, 1): stem 4 x 4, last stage 2 x 2."""
  return np.random.default_rng(seed).standard_normal((n, 8, 64, 1)).astype(np.float32)


def logits(model, x):
  return nnx.jit(lambda model: model(x))(model)


def torch_state(model) -> dict[str, np.ndarray]:
  return fastvit_io.to_torch(model, nnx.to_pure_dict(nnx.state(model, VARIABLES)))


def num_params(model) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def leaf_names(model, variable=nnx.Param) -> list[str]:
  paths = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, variable)))
  return [path[-1].key for path, _ in paths]


# ---- sizes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dwconv, count", [("conv", 21_064_015), ("dcls", 21_016_655)])
def test_sa24_has_the_computed_parameter_count(dwconv, count):
  """spec audio.md 4.5: 527 classes, dense 7x7 baseline and DCLS (d 23, 26 elements) with shared positions."""
  model = nnx.eval_shape(lambda: fastvit.FastViT.sa24(dwconv=dwconv, rngs=nnx.Rngs(0)))
  assert num_params(model) == count
  assert [len(layer) for layer in model.network if isinstance(layer, nnx.List)] == [4, 4, 12, 4]
  assert model.head.kernel.shape == (1024, 527)


def test_features_are_the_head_input():
  model, x = tiny(), spectrograms()
  features, out = nnx.jit(lambda model: (model.features(x), model(x)))(model)
  assert features.shape == (2, 64)  # 2 x embed_dims[-1]
  np.testing.assert_allclose(out, features @ model.head.kernel[...] + model.head.bias[...], atol=1e-5)


def test_drop_path_grows_linearly_over_all_blocks():
  model = tiny(drop_path_rate=0.4)
  assert model.network[0][0].drop_path is None  # rate 0: no RNG stream
  assert model.network[0][1].drop_path.rate == pytest.approx(0.2)
  assert model.network[3][0].drop_path.rate == pytest.approx(0.4)


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match="one entry per stage"):
    tiny(mlp_ratios=(4,))
  with pytest.raises(ValueError, match="larger multiple"):
    tiny(embed_dims=(8, 36))
  with pytest.raises(ValueError, match="multiple of 32"):
    tiny(embed_dims=(8, 48))
  with pytest.raises(ValueError, match="token_mixers=.*'conv'"):
    tiny(token_mixers=("repmixer", "conv"))
  with pytest.raises(ValueError, match="dwconv='v0'"):
    tiny(dwconv="v0")
  with pytest.raises(ValueError, match=r"channels last; got shape \(2, 1, 8, 64\)"):
    tiny()(jnp.zeros((2, 1, 8, 64)))
  config = dict(num_classes=4, layers=[1, 1], embed_dims=[8, 32], mlp_ratios=[2, 2],
                token_mixers=["repmixer", "attention"], pos_embs=[None, "RepCPE(7x7)"], dilated_kernel_size=5,
                kernel_count=3)
  with pytest.raises(ValueError, match="config.down_stride=4"):
    fastvit_io.model_from_reference(config | dict(down_stride=4))
  with pytest.raises(ValueError, match="config.pos_embs"):
    fastvit_io.model_from_reference(config | dict(pos_embs=[None, "PE"]))


# ---- DCLS position sharing ------------------------------------------------------------------------------------

def test_repcpe_creates_the_positions_its_stage_shares():
  """The reference rule: new positions when the width grows; RepCPE is the first wider layer of the last stage."""
  model = tiny()
  stage0, cpe, stage1 = model.network[0], model.network[2], model.network[3]
  assert stage0[1].convffn.conv.conv.positions is stage0[0].convffn.conv.conv.positions
  assert stage1[0].convffn.conv.conv.positions is cpe.pe.positions
  assert stage1[0].convffn.conv.conv.sigmas is cpe.pe.sigmas
  assert stage1[0].convffn.conv.conv.weight is not cpe.pe.weight
  assert leaf_names(model).count("positions") == leaf_names(model).count("sigmas") == 2


# ---- reparameterisation ---------------------------------------------------------------------------------------

def test_reparameterized_model_equals_the_training_form_in_eval_mode():
  model = tiny()
  model.eval()
  inference = fastvit.reparameterize(model)
  np.testing.assert_allclose(logits(inference, spectrograms()), logits(model, spectrograms()), rtol=1e-4,
                             atol=1e-4)
  assert model.network[0][0].token_mixer.reparam_conv is None  # the argument keeps its training form


def test_reparameterized_state_has_the_reference_names():
  """RepMixer, MobileOne blocks and the PatchEmbed pair each become one conv; RepCPE and ConvFFN stay."""
  state = torch_state(fastvit.reparameterize(tiny()))
  assert state["network.0.0.token_mixer.reparam_conv.weight"].shape == (8, 1, 3, 3)
  assert state["network.1.proj.0.lkb_reparam.weight"].shape == (32, 1, 7, 7)
  assert state["network.1.proj.1.reparam_conv.weight"].shape == (32, 32, 1, 1)
  assert state["conv_exp.reparam_conv.weight"].shape == (64, 1, 3, 3)
  assert {"network.2.pe.P", "network.3.0.convffn.conv.bn.running_var", "conv_exp.se.reduce.weight"} <= set(state)
  assert not [name for name in state if "rbr_" in name or "lkb_origin" in name or "token_mixer.layer_scale" in name]


def test_reparameterized_state_loads_into_a_reparameterized_model():
  source = fastvit.reparameterize(tiny())
  target = fastvit.reparameterize(tiny(seed=5))
  fastvit_io.load_torch_state(target, torch_state(source))
  source.eval()
  target.eval()
  np.testing.assert_array_equal(logits(target, spectrograms()), logits(source, spectrograms()))


# ---- PyTorch state dicts and checkpoints ----------------------------------------------------------------------

@pytest.mark.parametrize("dwconv", sorted(DWCONVS))
def test_torch_state_round_trip_reproduces_the_model(dwconv):
  source = tiny(dwconv)
  state = torch_state(source)
  assert state["network.0.0.layer_scale"].shape == (8, 1, 1)
  assert state["network.1.proj.0.lkb_origin.conv.weight"].shape == (32, 1, 7, 7)  # grouped by input channel
  assert state["network.3.0.token_mixer.qkv.weight"].shape == (96, 32)  # (out, in)
  assert state["network.0.0.token_mixer.norm.rbr_skip.num_batches_tracked"].shape == ()
  assert "network.0.0.convffn.conv.conv.bias" not in state and "network.2.pe.bias" in state
  target = tiny(dwconv, seed=7)
  fastvit_io.load_torch_state(target, state)
  source.eval()
  target.eval()
  np.testing.assert_array_equal(logits(target, spectrograms()), logits(source, spectrograms()))


def test_shared_gradient_is_written_under_every_alias():
  model = tiny()
  grads = nnx.jit(nnx.grad(lambda model: jnp.sum(model(spectrograms()) ** 2)))(model)
  state = fastvit_io.to_torch(model, nnx.to_pure_dict(grads))
  np.testing.assert_array_equal(state["network.3.0.convffn.conv.conv.SIG"], state["network.2.pe.SIG"])
  assert np.any(state["network.2.pe.SIG"] != 0)


def test_pth_checkpoint_import(tmp_path):
  """The published checkpoint holds the training-form state dict under 'model'."""
  torch = pytest.importorskip("torch")
  source = tiny()
  state = {name: torch.from_numpy(np.array(value)) for name, value in torch_state(source).items()}
  torch.save({"model": state, "epoch": 59}, tmp_path / "fastvit_dcls_audio_sa24.pth")
  target = tiny(seed=3)
  fastvit_io.load_checkpoint(target, tmp_path / "fastvit_dcls_audio_sa24.pth")
  source.eval()
  target.eval()
  np.testing.assert_array_equal(logits(target, spectrograms()), logits(source, spectrograms()))


@pytest.mark.skipif(not FIXTURES, reason="no dcls_audio_fastvit fixtures")
@pytest.mark.parametrize("path", FIXTURES[:1], ids=os.path.basename)
def test_fixture_state_round_trips_with_one_positions_leaf_per_stage(path):
  meta, arrays = parity.load(path)
  state = torch_table.fixture_state(arrays)
  model = nnx.eval_shape(lambda: fastvit_io.model_from_reference(meta["config"]))
  fastvit_io.load_torch_state(model, state)
  assert leaf_names(model).count("positions") == len(meta["config"]["layers"])
  back = torch_state(model)
  assert back.keys() == state.keys()
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)
