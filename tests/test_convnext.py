"""ConvNeXt(-dcls): reference parity, PyTorch state dicts and checkpoints, standard sizes, sharing, drop path."""
from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import convnext
from models import convnext_io
from models import torch_table
from models import parity
from tests import test_parity_fixtures

FIXTURES = test_parity_fixtures.fixtures("convnext_dcls")
DWCONVS = {"conv": dict(kind="conv", kernel_size=3),
           "v0": dict(kernel_size=5, kernel_count=3, version="v0"),
           "gauss": dict(kernel_size=5, kernel_count=3, version="gauss")}


def tiny(kind="v0", **kwargs) -> convnext.ConvNeXt:
  """Two stages (2 and 1 blocks, 4 and 8 channels) on 16 x 16 images, 5 classes; ``kind``: a key of DWCONVS."""
  kwargs = dict(depths=(2, 1), dims=(4, 8), dwconv=DWCONVS[kind], patch_size=2, rngs=nnx.Rngs(0)) | kwargs
  return convnext.ConvNeXt(5, **kwargs)


def images(n=2, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, 16, 16, 3))


def num_params(model) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def torch_state(model) -> dict[str, np.ndarray]:
  return convnext_io.to_torch(model, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


# ---- reference parity -----------------------------------------------------------------------------------------

@pytest.mark.skipif(not FIXTURES, reason="no convnext_dcls fixtures")
@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_fixture_state_round_trips_with_one_leaf_per_alias_group(path):
  meta, arrays = parity.load(path)
  state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
  model = nnx.eval_shape(lambda: convnext_io.model_from_reference(meta["config"]))
  convnext_io.load_torch_state(model, state)
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  aliases = sum(len(group) - 1 for group in meta.get("aliases", []))
  assert len(leaves) == len(state) - aliases
  back = torch_state(model)
  assert back.keys() == state.keys()
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


# ---- PyTorch state dicts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dwconv", sorted(DWCONVS))
def test_torch_state_round_trip_reproduces_the_model(dwconv):
  source = tiny(dwconv)
  state = torch_state(source)
  assert state["downsample_layers.1.1.weight"].shape == (8, 4, 2, 2)  # OIHW
  assert state["stages.0.0.pwconv1.weight"].shape == (16, 4)  # (out, in)
  target = tiny(dwconv, rngs=nnx.Rngs(7))
  convnext_io.load_torch_state(target, state)
  np.testing.assert_array_equal(target(images()), source(images()))
  assert torch_state(target).keys() == state.keys()


@pytest.mark.parametrize("version, peak", [("v0", (5, 2)), ("gauss", (2, 5))])
def test_reference_position_rows_follow_the_version(version, peak):
  """dcls.md: one element of weight 1 at P = (+2, -1) in a 7 x 7 kernel peaks at (row 5, col 2) for v0 and at
  (row 2, col 5) for gauss."""
  model = convnext.ConvNeXt(5, depths=(1,), dims=(2,), dwconv=dict(kernel_size=7, kernel_count=1, version=version),
                            rngs=nnx.Rngs(0))
  state = torch_state(model)
  state["stages.0.0.dwconv.weight"] = np.ones((2, 1, 1), np.float32)
  state["stages.0.0.dwconv.P"] = np.broadcast_to(np.array([2.0, -1.0], np.float32)[:, None, None, None],
                                                 (2, 2, 1, 1)).copy()
  convnext_io.load_torch_state(model, state)
  kernel = np.asarray(model.stages[0][0].dwconv.kernel())[0, 0]
  assert np.unravel_index(np.argmax(kernel), kernel.shape) == peak


def test_shared_gradient_is_written_under_every_alias():
  model = tiny("gauss")
  grads = nnx.grad(lambda m: jnp.sum(m(images()) ** 2))(model)
  state = convnext_io.to_torch(model, nnx.to_pure_dict(grads))
  shared = grads["stages"][0][0]["dwconv"]["positions"][...]
  for block in (0, 1):
    np.testing.assert_array_equal(state[f"stages.0.{block}.dwconv.P"], np.asarray(shared)[::-1])  # gauss: (W, H)
  assert np.any(state["stages.0.0.dwconv.SIG"] != 0)


def test_bad_state_dicts_are_refused_with_the_name_at_fault():
  model = tiny("v0")
  state = torch_state(model)
  with pytest.raises(ValueError, match=r"missing \['stages.0.1.gamma'\]"):
    convnext_io.load_torch_state(model, {k: v for k, v in state.items() if k != "stages.0.1.gamma"})
  with pytest.raises(ValueError, match=r"unexpected \['head.extra'\]"):
    convnext_io.load_torch_state(model, state | {"head.extra": np.zeros(1)})
  with pytest.raises(ValueError, match=r"state_dict\['head.weight'\] has shape \(5, 9\); .* expects \(5, 8\)"):
    convnext_io.load_torch_state(model, state | {"head.weight": np.zeros((5, 9), np.float32)})
  with pytest.raises(ValueError, match=r"stages.0.1.dwconv.P.* differs from .*stages.0.0.dwconv.P"):
    convnext_io.load_torch_state(model, state | {"stages.0.1.dwconv.P": state["stages.0.1.dwconv.P"] + 1})


# ---- checkpoints ----------------------------------------------------------------------------------------------

class _RunsCodeWhenUnpickled:
  def __reduce__(self):
    return (os.getcwd, ())


@pytest.mark.parametrize("wrapping, key", [(None, None), ("model", None), ("model_ema", None), ("model_ema",
                                                                                                  "model_ema")])
def test_pth_checkpoint_import(wrapping, key, tmp_path):
  torch = pytest.importorskip("torch")
  source = tiny("v0")
  state = {name: torch.from_numpy(value.copy()) for name, value in torch_state(source).items()}
  checkpoint = state if wrapping is None else {wrapping: state, "epoch": 299}
  if key is not None:
    checkpoint["model"] = {name: torch.zeros(1) for name in state}  # the key chooses the EMA weights
  torch.save(checkpoint, tmp_path / "ckpt.pth")
  target = tiny("v0", rngs=nnx.Rngs(3))
  convnext_io.load_torch_state(target, torch_table.load_torch_checkpoint(tmp_path / "ckpt.pth", key=key))
  np.testing.assert_array_equal(target(images()), source(images()))


def test_pth_checkpoint_never_runs_pickled_code(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"model": {"head.bias": torch.zeros(5)}, "args": _RunsCodeWhenUnpickled()}, tmp_path / "evil.pth")
  with pytest.raises(pickle.UnpicklingError, match="Weights only"):
    torch_table.load_torch_checkpoint(tmp_path / "evil.pth")


def test_checkpoint_key_must_exist(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"model": {"head.bias": torch.zeros(5)}}, tmp_path / "ckpt.pth")
  with pytest.raises(ValueError, match=r"key='model_ema'.*\['model'\]"):
    torch_table.load_torch_checkpoint(tmp_path / "ckpt.pth", key="model_ema")


def test_safetensors_checkpoint_import(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  source = tiny("gauss")
  safetensors_numpy.save_file(torch_state(source), str(tmp_path / "ckpt.safetensors"))
  target = tiny("gauss", rngs=nnx.Rngs(3))
  convnext_io.load_torch_state(target, torch_table.load_torch_checkpoint(str(tmp_path / "ckpt.safetensors")))
  np.testing.assert_array_equal(target(images()), source(images()))


# ---- sizes ----------------------------------------------------------------------------------------------------

def abstract(size, dwconv):
  return nnx.eval_shape(lambda: convnext.ConvNeXt.from_size(size, dwconv=dwconv, rngs=nnx.Rngs(0)))


def test_convnext_t_has_the_published_parameter_count():
  assert num_params(abstract("T", "conv")) == 28_589_128  # timm convnext_tiny, 1000 classes


@pytest.mark.parametrize("size, dwconv, removed, added", [
    ("T", "v0", 15 * 6624, 2 * 34 * 1440),  # dcls.md 4.1: -99.4 k depthwise weights, +97.9 k positions
    ("S", "v0", 9 * 13536, 2 * 40 * 1440),  # -121.8 k / +115.2 k
    ("B", "v0", 9 * 18048, 2 * 40 * 1920),  # -162.4 k / +153.6 k
    ("T", "gauss", 23 * 6624, 4 * 26 * 1440),  # dcls.md 4.2: -152.4 k / +149.8 k (positions and sigmas)
])
def test_dcls_recipes_are_iso_parameter(size, dwconv, removed, added):
  assert num_params(abstract(size, dwconv)) - num_params(abstract(size, "conv")) == added - removed


def test_from_size_uses_the_recipe():
  model = abstract("S", "v0")
  assert [len(stage) for stage in model.stages] == [3, 3, 27, 3]
  assert model.stages[3][0].dwconv.weight.shape == (768, 1, 40)
  assert model.stages[3][2].drop_path.rate == pytest.approx(0.4)  # the last block: the size's drop path rate
  with pytest.raises(ValueError, match="size='L'"):
    convnext.ConvNeXt.from_size("L", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dwconv='v2'"):
    convnext.ConvNeXt.from_size("T", dwconv="v2", rngs=nnx.Rngs(0))


# ---- position sharing and stochastic depth --------------------------------------------------------------------

@pytest.mark.parametrize("share, leaves", [(True, 2), (False, 3)])
def test_shared_positions_are_one_leaf_per_stage(share, leaves):
  model = tiny("gauss", dwconv=DWCONVS["gauss"] | dict(share_positions=share))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  names = [path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert names.count("positions") == names.count("sigmas") == leaves
  assert (model.stages[0][1].dwconv.positions is model.stages[0][0].dwconv.positions) == share


def test_drop_path_only_in_training_mode():
  model = tiny("conv", drop_path_rate=0.9, layer_scale_init=1.0, rngs=nnx.Rngs(params=0, dropout=1))
  plain = tiny("conv", drop_path_rate=0.0, layer_scale_init=1.0)
  nnx.update(plain, nnx.state(model, nnx.Param))
  model.eval()
  np.testing.assert_array_equal(model(images()), plain(images()))
  model.train()
  dropped = model(images())
  assert not np.allclose(dropped, plain(images()))
  assert not np.allclose(dropped, model(images()))  # fresh masks every call


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match="depths=.*dims="):
    convnext.ConvNeXt(5, depths=(1, 1), dims=(4,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="config.dwconv='dcls_v1'"):
    convnext_io.model_from_reference(dict(dwconv="dcls_v1", num_classes=2, depths=(1,), dims=(4,)))
