"""Every experiment config builds: fields present, model and optimiser constructible; the SNN recipes' schedules
are the reference's (spec snn_delays.md section 2.5, SHD samples); the kernel-sharing configs build the reference's
models (parameter counts of spec kernel_sharing.md sections 2.4, 3.4) and recipes (section 4); the DCLS-Audio
configs build the paper's six models (parameter counts of spec audio.md sections 3.2, 4.4, 4.5)."""
from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import audioset_dcls
from configs import convnext_dcls_imagenet
from configs import ks_convmixer_cifar
from configs import ks_convmixer_digits
from configs import ks_seresnet_cifar
from dcls_jax import optim as dcls_optim
from models import convnext
from models import registry
from train import data
from train import optimizers
from train import trainer
from train.data.pipeline import ExampleRandom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(path for path in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                     if not os.path.basename(path).startswith(("_", "snn_common")))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_config_builds_its_model_and_optimiser(path):
  config = trainer.load_config(path)
  trainer.check_config(config)
  module = registry.create_model(config.model, rngs=nnx.Rngs(0))
  tx, schedules = optimizers.build_optimizer(config, steps_per_epoch=4, total_steps=4 * config.num_epochs,
                                             position_limits=dcls_optim.dcls_position_limits(module))
  assert "lr" in schedules and tx is not None


@pytest.mark.parametrize("variant, kernel_count", [("T-conv", None), ("T-gauss", 26), ("T-v0", 34)])
def test_imagenet_variants_build_the_recipes_depthwise_conv(variant, kernel_count):
  config = convnext_dcls_imagenet.get_config(variant)
  trainer.check_config(config)
  dwconv = registry.create_model(config.model, rngs=nnx.Rngs(0)).stages[0][0].dwconv
  if kernel_count is None:
    assert isinstance(dwconv, convnext.DepthwiseConv)
  else:
    assert dwconv.spec.kernel_count == kernel_count
  assert (config.optimizer.repulsive_after_epoch == 20) == variant.endswith("v0")


@pytest.mark.parametrize("epoch, lr, b1, lr_positions", [
    (0, 2.0e-4, 0.95, 0.1), (37, 4.706e-3, 0.8561, 8.572e-2), (75, 4.0e-3, 0.87, 5.0e-2),
    (149, 2.0e-8, 0.95, 1.0966e-5)])
def test_shd_recipe_schedules_are_the_references(epoch, lr, b1, lr_positions):
  config = trainer.load_config(os.path.join(ROOT, "configs", "snn_shd.py"))
  steps_per_epoch = 32
  config.optimizer.clamp_positions = False  # the clamp needs a model; the schedules do not
  _, schedules = optimizers.build_optimizer(config, steps_per_epoch=steps_per_epoch,
                                            total_steps=steps_per_epoch * config.num_epochs)
  step = epoch * steps_per_epoch + steps_per_epoch // 2  # per-epoch schedules: constant within the epoch
  np.testing.assert_allclose(float(schedules["lr"](step)), lr, rtol=1e-3)
  np.testing.assert_allclose(float(schedules["b1"](step)), b1, rtol=1e-4)
  np.testing.assert_allclose(float(schedules["lr_positions"](step)), lr_positions, rtol=1e-3)
  sigma = dcls_optim.sigma_schedule(epoch, **config.sigma_schedule)
  np.testing.assert_allclose(float(sigma) + 0.27, 0.5 if epoch >= 37 else 12 * (0.23 / 12) ** (epoch / 37) + 0.27,
                             rtol=1e-5)


# ---- kernel sharing ------------------------------------------------------------------------------------------------

STEPS_PER_EPOCH = 390  # 50,000 CIFAR images // batch 128


def parameter_count(module: nnx.Module) -> int:
  """Trainable parameters, each shared Variable once (BatchNorm running statistics excluded)."""
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


# DCLS: the dense count with each 9x9 depthwise kernel (81 per channel) replaced by 27 weights per channel, plus the
# 27 x 2 positions and 27 x 2 sigmas per channel that every variant shares among the 16 blocks.
@pytest.mark.parametrize("get_config, variant, count", [
    (ks_convmixer_cifar.get_config, "unshared", 1_409_034),
    (ks_convmixer_cifar.get_config, "shared", 107_274),
    (ks_convmixer_cifar.get_config, "unshared-cifar100", 1_432_164),
    (ks_convmixer_cifar.get_config, "shared-cifar100", 130_404),
    (ks_convmixer_cifar.get_config, "dcls-unshared", 1_409_034 - 16 * (81 - 27) * 256 + 4 * 27 * 256),
    (ks_convmixer_cifar.get_config, "dcls-shared", 107_274 - (81 - 27) * 256 + 4 * 27 * 256),
    (ks_seresnet_cifar.get_config, "unshared", 2_771_290),
    (ks_seresnet_cifar.get_config, "shared", 1_223_002),
    (ks_seresnet_cifar.get_config, "unshared-cifar100", 2_794_420),
    (ks_seresnet_cifar.get_config, "shared-cifar100", 1_246_132),
])
def test_kernel_sharing_configs_build_the_references_models_and_an_optimiser(get_config, variant, count):
  config = get_config(variant)
  trainer.check_config(config)
  module = nnx.eval_shape(lambda: registry.create_model(config.model, rngs=nnx.Rngs(0)))
  assert parameter_count(module) == count
  tx, _ = optimizers.build_optimizer(config, steps_per_epoch=STEPS_PER_EPOCH,
                                     total_steps=STEPS_PER_EPOCH * config.num_epochs,
                                     position_limits=dcls_optim.dcls_position_limits(module))
  assert tx is not None


@pytest.mark.parametrize("get_config", [ks_convmixer_cifar.get_config, ks_seresnet_cifar.get_config])
def test_kernel_sharing_configs_reject_an_unknown_variant(get_config):
  with pytest.raises(ValueError, match="variant 'half-shared'"):
    get_config("half-shared")


def weight_decay_update(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
  """(params, the first update with zero gradients) of ``config`` with a tiny model: only weight decay moves the
  parameters."""
  module = registry.create_model(config.model, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  tx, _ = optimizers.build_optimizer(config, steps_per_epoch=STEPS_PER_EPOCH,
                                     total_steps=STEPS_PER_EPOCH * config.num_epochs,
                                     position_limits=dcls_optim.dcls_position_limits(module))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  return params, updates


def leaves_by_path(tree) -> dict[str, jax.Array]:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("variant", ["shared", "dcls-unshared"])
def test_convmixer_recipe_decays_only_kernels_by_lr_times_0_01(variant):
  config = ks_convmixer_cifar.get_config(variant)
  config.model.update(dim=8, depth=2)
  params, updates = weight_decay_update(config)
  updates = leaves_by_path(updates)
  for path, param in leaves_by_path(params).items():
    decayed = param.ndim > 1 and not path.endswith(("['positions']", "['sigmas']"))
    np.testing.assert_allclose(updates[path], -1e-2 * 0.01 * param if decayed else 0.0, rtol=1e-5, err_msg=path)


def test_seresnet_recipe_adds_l2_to_the_gradient_of_every_parameter():
  config = ks_seresnet_cifar.get_config("shared")
  config.model.update(widths=(16, 32, 64), n_size=1)
  params, updates = weight_decay_update(config)
  updates = leaves_by_path(updates)
  for path, param in leaves_by_path(params).items():  # BatchNorm scales and the head's bias included
    np.testing.assert_allclose(updates[path], -0.1 * 1e-4 * param, rtol=1e-5, err_msg=path)


def test_convmixer_recipe_is_a_per_step_cosine_from_1e_2_to_1e_6_over_200_epochs():
  config = ks_convmixer_cifar.get_config("shared")
  total = STEPS_PER_EPOCH * config.num_epochs
  _, schedules = optimizers.build_optimizer(config, steps_per_epoch=STEPS_PER_EPOCH, total_steps=total)
  for step in (0, 1, 39_000, 77_999):
    expected = 1e-6 + 0.5 * (1e-2 - 1e-6) * (1 + np.cos(np.pi * step / 78_000))
    np.testing.assert_allclose(float(schedules["lr"](step)), expected, rtol=1e-5)


def test_seresnet_recipe_divides_the_lr_by_10_at_epochs_85_130_180():
  config = ks_seresnet_cifar.get_config("shared")
  _, schedules = optimizers.build_optimizer(config, steps_per_epoch=STEPS_PER_EPOCH,
                                            total_steps=STEPS_PER_EPOCH * config.num_epochs)
  steps = [0, 33_149, 33_150, 50_699, 50_700, 70_199, 70_200, 99_839]
  np.testing.assert_allclose([float(schedules["lr"](step)) for step in steps],
                             [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)


@pytest.mark.parametrize("get_config, variant, label_shape", [
    (ks_convmixer_cifar.get_config, "shared", (4, 10)),  # mixup's soft targets
    (ks_convmixer_cifar.get_config, "dcls-unshared-cifar100", (4, 100)),
    (ks_seresnet_cifar.get_config, "unshared-cifar100", (4,)),
])
def test_kernel_sharing_configs_augment_cifar_batches(get_config, variant, label_shape):
  dataset = get_config(variant).dataset
  batch = {"image": np.zeros((4, 32, 32, 3), np.uint8), "label": np.arange(4)}
  out = data.get_transform(dataset, train=True)(batch, ExampleRandom(0, 0, np.arange(4)))
  assert out["image"].shape == (4, 32, 32, 3) and out["label"].shape == label_shape


def test_digits_demonstration_shares_kernels_of_a_one_channel_convmixer():
  counts = {}
  for variant in ("shared", "unshared"):
    model = registry.create_model(ks_convmixer_digits.get_config(variant).model, rngs=nnx.Rngs(0))
    assert model(jnp.zeros((2, 8, 8, 1))).shape == (2, 10)
    counts[variant] = parameter_count(model)
  # 8 blocks of width 64, 5x5: 7 copies of the depthwise (25 x 64 + 64) and pointwise (64 x 64 + 64) convs fewer
  assert counts == {"unshared": 49_546, "shared": 49_546 - 7 * (25 * 64 + 64 + 64 * 64 + 64)}


# ---- audio -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, count, optimizer", [
    ("convnext-dcls", 28_221_263, "adamw"), ("convnext-conv", 28_223_855, "adamw"),
    ("convformer-dcls", 25_781_207, "lamb"), ("convformer-conv", 25_797_847, "lamb"),
    ("fastvit-dcls", 21_016_655, "adamw"), ("fastvit-conv", 21_064_015, "adamw")])
def test_dcls_audio_configs_build_the_papers_models(variant, count, optimizer):
  config = audioset_dcls.get_config(variant)
  trainer.check_config(config)
  module = nnx.eval_shape(lambda: registry.create_model(config.model, rngs=nnx.Rngs(0)))
  assert sum(v.size for v in jax.tree.leaves(nnx.state(module, nnx.Param))) == count
  assert config.optimizer.name == optimizer and config.optimizer.dcls_position_lr_mult == 5.0


def test_dcls_audio_config_rejects_an_unknown_variant():
  with pytest.raises(ValueError, match="resnet-dcls"):
    audioset_dcls.get_config("resnet-dcls")
