"""Every experiment config builds: fields present, model and optimiser constructible; the SNN recipes' schedules
are the reference's (spec snn_delays.md section 2.5, SHD samples)."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from flax import nnx

from configs import convnext_dcls_imagenet
from dcls_jax import optim as dcls_optim
from models import convnext
from models import registry
from models import snn_delays
from train import optimizers
from train import trainer

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
  sigma = snn_delays.sigma_schedule(epoch, **config.sigma_schedule)
  np.testing.assert_allclose(float(sigma) + 0.27, 0.5 if epoch >= 37 else 12 * (0.23 / 12) ** (epoch / 37) + 0.27,
                             rtol=1e-5)
