"""ConvFormer (DCLS-Audio): sizes and shapes, position sharing, PyTorch state dicts and checkpoints, the fixtures'
state layout, stochastic depth. Numerical parity with the reference runs in ``test_parity_fixtures``."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import convformer
from models import dcls_audio
from models import convformer_io
from models import parity
from models import torch_table
from tests import test_parity_fixtures

FIXTURES = test_parity_fixtures.fixtures("dcls_audio_convformer")
DWCONVS = {"conv": dict(kind="conv", kernel_size=3), "dcls": dict(kernel_size=5, kernel_count=3, version="gauss")}


def tiny(kind="dcls", **kwargs) -> convformer.ConvFormer:
  """Two stages (2 and 1 blocks, 4 and 8 channels, residual scales in the second), 2 x 4 stem patches, 5 classes;
  ``kind``: a key of DWCONVS."""
  kwargs = dict(depths=(2, 1), dims=(4, 8), dwconv=DWCONVS[kind], res_scale_stages=(False, True),
                stem_patch=(2, 4), rngs=nnx.Rngs(0)) | kwargs
  return convformer.ConvFormer(5, **kwargs)


def spectrograms(n=2, seed=1):
  """(n, 16 mel, 32 frames, 1)."""
  return jax.random.normal(jax.random.key(seed), (n, 16, 32, 1))


@nnx.jit
def logits(model, x):
  return model(x)


def num_params(model) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def torch_state(model) -> dict[str, np.ndarray]:
  return convformer_io.to_torch(model, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


# ---- sizes and shapes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dwconv, count", [("conv", 25_797_847), ("dcls", 25_781_207)])
def test_s18_has_the_spec_parameter_count(dwconv, count):
  """audio.md 4.4: ConvFormer-S18 with 527 classes; DCLS positions and sigmas counted once per stage."""
  model = nnx.eval_shape(lambda: convformer.ConvFormer.s18(dwconv=dwconv, rngs=nnx.Rngs(0)))
  assert num_params(model) == count


def test_s18_layout():
  model = nnx.eval_shape(lambda: convformer.ConvFormer.s18(rngs=nnx.Rngs(0)))
  assert [len(stage) for stage in model.stages] == [3, 3, 9, 3]
  assert [stage[0].res_scale1 is not None for stage in model.stages] == [False, False, True, True]
  dwconv = model.stages[3][0].token_mixer.dwconv
  assert (dwconv.weight.shape, dwconv.positions.shape, dwconv.bias) == ((1024, 1, 26), (2, 1024, 1, 26), None)
  assert model.stages[3][0].mlp.fc1.kernel.shape == (512, 2048)
  assert model.head.fc1.kernel.shape == (512, 2048) and model.head.norm.epsilon == 1e-5


def test_stem_floors_and_downsamples_ceil():
  """audio.md 4.4: stem patches drop the trailing T mod 16 frames; the stride-2 convs (pad 1) round up."""
  model = nnx.eval_shape(lambda: convformer.ConvFormer(3, depths=(1, 1, 1), dims=(4, 8, 8), dwconv="dcls",
                                                      res_scale_stages=(False,) * 3, rngs=nnx.Rngs(0)))
  x = jnp.zeros((1, 24, 90, 1))
  shapes = [y.shape for y in nnx.eval_shape(lambda model: model.stage_outputs(x), model)]
  assert shapes == [(1, 12, 5, 4), (1, 6, 3, 8), (1, 3, 2, 8)]
  assert nnx.eval_shape(lambda model: model.features(x), model).shape == (1, 8)
  assert nnx.eval_shape(lambda model: model(x), model).shape == (1, 3)


def test_star_relu():
  act = convformer.StarReLU()
  act.scale[...], act.bias[...] = jnp.array([2.0]), jnp.array([-0.5])
  np.testing.assert_array_equal(act(jnp.array([-1.0, 0.0, 3.0])), [-0.5, -0.5, 17.5])


def test_dcls_init_follows_dcls_audio():
  """audio.md 4.1: weights N(0, 0.02^2), positions N(0, 0.5^2) within the kernel, sigmas 0.23; no bias."""
  model = tiny(dwconv=dcls_audio.DWCONVS["dcls"], depths=(1,), dims=(32,), res_scale_stages=(False,))
  dwconv = model.stages[0][0].token_mixer.dwconv
  assert dwconv.bias is None
  np.testing.assert_array_equal(dwconv.sigmas[...], np.float32(0.23))
  assert np.std(dwconv.weight[...]) == pytest.approx(0.02, rel=0.1)
  assert np.std(dwconv.positions[...]) == pytest.approx(0.5, rel=0.1)
  assert np.abs(dwconv.positions[...]).max() <= 11


# ---- position sharing ------------------------------------------------------------------------------------------

def _leaf_names(model) -> list[str]:
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return [path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(params)]


@pytest.mark.parametrize("dims, share, leaves", [((4, 8), True, 2), ((4, 8), False, 3), ((4, 4), True, 1)])
def test_positions_are_shared_while_the_width_does_not_grow(dims, share, leaves):
  """The reference's rule: new positions and sigmas when the width grows; equal-width stages share one set."""
  model = tiny(dims=dims, dwconv=DWCONVS["dcls"] | dict(share_positions=share))
  names = _leaf_names(model)
  assert names.count("positions") == names.count("sigmas") == leaves
  assert names.count("weight") == 3
  assert (model.stages[0][1].token_mixer.dwconv.positions is model.stages[0][0].token_mixer.dwconv.positions) == share


def test_shared_gradient_is_written_under_every_alias():
  model = tiny()
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(spectrograms()) ** 2)))(model)
  state = convformer_io.to_torch(model, nnx.to_pure_dict(grads))
  shared = np.asarray(grads["stages"][0][0]["token_mixer"]["dwconv"]["positions"][...])
  for block in (0, 1):
    np.testing.assert_array_equal(state[f"stages.0.{block}.token_mixer.dwconv.P"], shared[::-1])  # gauss: (W, H)
  assert np.any(state["stages.0.0.token_mixer.dwconv.SIG"] != 0)


# ---- PyTorch state dicts and checkpoints -----------------------------------------------------------------------

@pytest.mark.parametrize("dwconv", sorted(DWCONVS))
def test_torch_state_round_trip_reproduces_the_model(dwconv):
  source = tiny(dwconv)
  state = torch_state(source)
  assert state["downsample_layers.0.conv.weight"].shape == (4, 1, 2, 4)  # OIHW, no bias
  assert state["stages.0.0.token_mixer.pwconv1.weight"].shape == (8, 4)  # (out, in)
  assert "stages.1.0.res_scale2.scale" in state and "stages.0.0.res_scale1.scale" not in state
  assert "stages.0.0.norm1.bias" not in state and "head.norm.bias" in state
  target = tiny(dwconv, rngs=nnx.Rngs(7))
  convformer_io.load_torch_state(target, state)
  np.testing.assert_array_equal(logits(target, spectrograms()), logits(source, spectrograms()))
  assert torch_state(target).keys() == state.keys()


def test_bad_state_dicts_are_refused_with_the_name_at_fault():
  model = tiny()
  state = torch_state(model)
  with pytest.raises(ValueError, match=r"missing \['stages.1.0.res_scale1.scale'\]"):
    convformer_io.load_torch_state(model, {k: v for k, v in state.items() if k != "stages.1.0.res_scale1.scale"})
  with pytest.raises(ValueError, match=r"stages.0.1.token_mixer.dwconv.SIG.* differs from"):
    convformer_io.load_torch_state(
        model, state | {"stages.0.1.token_mixer.dwconv.SIG": state["stages.0.1.token_mixer.dwconv.SIG"] + 1})


@pytest.mark.parametrize("dwconv", sorted(DWCONVS))
def test_published_checkpoint_layout_loads(dwconv, tmp_path):
  """convformer_(dcls_)audio_s18.pth hold the state dict under 'model'."""
  torch = pytest.importorskip("torch")
  source = tiny(dwconv)
  state = {name: torch.from_numpy(value.copy()) for name, value in torch_state(source).items()}
  torch.save({"model": state, "epoch": 59}, tmp_path / "ckpt.pth")
  target = tiny(dwconv, rngs=nnx.Rngs(3))
  convformer_io.load_checkpoint(target, tmp_path / "ckpt.pth")
  np.testing.assert_array_equal(logits(target, spectrograms()), logits(source, spectrograms()))


@pytest.mark.skipif(not FIXTURES, reason="no dcls_audio_convformer fixtures")
@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_fixture_state_round_trips_with_one_leaf_per_stage(path):
  meta, arrays = parity.load(path)
  state = torch_table.fixture_state(arrays)
  model = nnx.eval_shape(lambda: convformer_io.model_from_reference(meta["config"]))
  convformer_io.load_torch_state(model, state)
  names = _leaf_names(model)
  assert names.count("positions") == names.count("sigmas") == len(meta["config"]["dims"])
  back = torch_state(model)
  assert back.keys() == state.keys()
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_reference_config_and_waveform_are_checked():
  config = dict(depths=(1,), dims=(4,), dilated_kernel_size=5, kernel_count=3, version="gauss", num_classes=2,
                mlp_ratio=4, res_scale_stages=(False,), drop_path_rate=0.0, stem_kernel=(2, 16),
                stem_stride=(2, 8), stem_padding=(0, 0), stem_bias=False)
  with pytest.raises(ValueError, match="config.stem_kernel"):
    convformer_io.model_from_reference(config)
  with pytest.raises(ValueError, match=r"input/waveform has shape \(2, 999\); expected \(B, config.clip_samples"):
    dcls_audio.reference_front_end(dict(clip_samples=1000), np.zeros((2, 999), np.float32))


# ---- stochastic depth and bad sizes ----------------------------------------------------------------------------

def test_drop_path_only_in_training_mode():
  model = tiny("conv", drop_path_rate=0.9, rngs=nnx.Rngs(params=0, dropout=1))
  plain = tiny("conv")
  nnx.update(plain, nnx.state(model, nnx.Param))
  model.eval()
  np.testing.assert_array_equal(logits(model, spectrograms()), logits(plain, spectrograms()))
  model.train()
  dropped = logits(model, spectrograms())
  assert not np.allclose(dropped, logits(plain, spectrograms()))
  assert not np.allclose(dropped, logits(model, spectrograms()))  # fresh masks every call


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match="depths=.*dims="):
    tiny(depths=(1, 1), dims=(4,))
  with pytest.raises(ValueError, match="res_scale_stages=.*one boolean per stage"):
    tiny(res_scale_stages=(True,))
  with pytest.raises(ValueError, match="dwconv='gauss'"):
    tiny(dwconv="gauss")
