"""ConvNeXt throughput: plain 7x7 depthwise convs vs DCLS v0 (d 17, Kc 34) vs DCLS gauss (d 23, Kc 26), one process.

Usage::

  python -m benchmarks.bench_convnext [--depths 3 3 9 3] [--dims 96 192 384 768] [--batch 8] [--image_size 224]
                                      [--steps 3] [--quick]

For each depthwise variant of the same ConvNeXt (default: ConvNeXt-T at 224 px), on one constant batch:

* train: images/s of the jitted data-parallel train step (forward, backward, AdamW with the DCLS recipe's
  position learning rate and clamp);
* inference: images/s of the jitted forward in eval mode;
* construction: seconds of building every DCLS kernel of the model (forward + backward of the kernels alone),
  the part of a DCLS step that is not convolution.

"plain 7x7" computes its depthwise conv with ``dcls_jax.conv`` (``conv_algorithm='auto'``, as the DCLS layers do);
"plain 7x7, XLA conv" with XLA's own convolution (what ``nnx.Conv`` does), slow for depthwise layers on CPU.

Prints the DCLS / plain ratios next to the reference's (ConvNeXt-dcls README, A100: T 774.7 -> 725.3 images/s at
inference, 0.936 for v0). Median over ``--steps`` timed calls after a compile call.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from benchmarks import common
from dcls_jax import nnx as dcls_nnx
from dcls_jax import optim as dcls_optim
from models import convnext
from train import optimizers
from train import parallel
from train import step as step_lib
from train import tasks

REFERENCE_RATIO_V0 = 725.3 / 774.7
VARIANTS = {  # ratios are to "plain 7x7", whose conv dcls_jax.conv chooses as for DCLS (FFT on CPU)
    "plain 7x7": convnext.DepthwiseConfig(kind="conv", kernel_size=7),
    "plain 7x7, XLA conv": convnext.DepthwiseConfig(kind="conv", kernel_size=7, conv_algorithm="direct"),
    "dcls v0 d17 Kc34": convnext.DepthwiseConfig(kind="dcls", kernel_size=17, kernel_count=34, version="v0"),
    "dcls gauss d23 Kc26": convnext.DepthwiseConfig(kind="dcls", kernel_size=23, kernel_count=26, version="gauss"),
}


def _optimizer_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      optimizer=dict(name="adamw", learning_rate=4e-3, weight_decay=0.05, dcls_position_lr_mult=5.0,
                     dcls_sigma_lr_mult=5.0, clamp_positions=True),
      schedule=dict(name="warmup_cosine", warmup_epochs=1, end_learning_rate=1e-6)))


def measure(dwconv, args, batch) -> dict[str, float]:
  module = convnext.ConvNeXt(1000, depths=tuple(args.depths), dims=tuple(args.dims), dwconv=dwconv,
                             drop_path_rate=0.1, rngs=nnx.Rngs(params=0, dropout=0))
  limits = dcls_optim.dcls_position_limits(module)
  model, params, batch_stats = step_lib.Model.split(module)
  tx, _ = optimizers.build_optimizer(_optimizer_config(), steps_per_epoch=100, total_steps=1000,
                                     position_limits=limits)
  dp = parallel.DataParallel("shard_map")
  task = tasks.create_task({"name": "classification", "label_smoothing": 0.1})
  train_step = dp.run(step_lib.make_train_step(model, tx, task, seed=0), donate_state=True)
  state = dp.replicate(step_lib.init_state(params, batch_stats, tx, ema=False))
  device_batch = jax.device_put(dp.shard_batch(batch))
  holder = {"state": state}

  def train():
    holder["state"], metrics = train_step(holder["state"], device_batch)
    jax.block_until_ready(metrics)

  predict = jax.jit(lambda p, x: model.apply(p, batch_stats, x, train=False)[0])
  images = jnp.asarray(batch["image"])
  seconds = {"train": common.timed(train, args.steps),
             "inference": common.timed(lambda: jax.block_until_ready(predict(params, images)), args.steps)}
  layers = [m for _, m in nnx.iter_modules(module) if isinstance(m, dcls_nnx.DclsConv)]
  if layers:
    construct = jax.jit(jax.grad(lambda p: sum(jnp.sum(m.spec.kernel(*w) ** 2) for m, w in zip(layers, p))))
    inputs = [(m.weight[...], m.positions[...], None if m.sigmas is None else m.sigmas[...]) for m in layers]
    seconds["construction"] = common.timed(lambda: jax.block_until_ready(construct(inputs)), args.steps)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[3, 3, 9, 3])
  parser.add_argument("--dims", type=int, nargs="+", default=[96, 192, 384, 768])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="a two-stage toy at 32 px: a smoke test")
  args = parser.parse_args()
  if args.quick:
    args.depths, args.dims, args.batch, args.image_size, args.steps = [1, 1], [8, 16], 2, 32, 1
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((args.batch, args.image_size, args.image_size, 3)).astype(np.float32),
           "label": rng.integers(0, 1000, args.batch).astype(np.int32)}
  print(f"{common.machine()}; ConvNeXt depths {args.depths} dims {args.dims}, batch {args.batch},"
        f" {args.image_size} px")
  results = {name: measure(dwconv, args, batch) for name, dwconv in VARIANTS.items()}
  plain = results["plain 7x7"]
  print("| depthwise conv | train img/s | ratio | inference img/s | ratio | kernel construction s (share of train) |")
  print("|---|---|---|---|---|---|")
  for name, seconds in results.items():
    construction = (f"{seconds['construction']:.3f} ({seconds['construction'] / seconds['train']:.0%})"
                    if "construction" in seconds else "-")
    print(f"| {name} | {args.batch / seconds['train']:.2f} | {plain['train'] / seconds['train']:.3f} |"
          f" {args.batch / seconds['inference']:.2f} | {plain['inference'] / seconds['inference']:.3f} |"
          f" {construction} |")
  print(f"reference (PyTorch, GPU) inference ratio for v0: {REFERENCE_RATIO_V0:.3f}")


if __name__ == "__main__":
  main()
