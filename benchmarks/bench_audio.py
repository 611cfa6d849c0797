"""Audio tagger throughput: each DCLS-Audio model with its plain 7x7 depthwise convs and with DCLS, one process.

Usage::

  python -m benchmarks.bench_audio [--batch 4] [--frames 1001] [--steps 3] [--models convnext convformer fastvit]
                                   [--quick]

For ConvNeXt-T, ConvFormer-S18 and FastViT-SA24 as DCLS-Audio builds them (128 mel bins x ``--frames`` frames,
527 classes), the same network with dense 7x7 depthwise convs ('conv', the paper's baseline) and with Gaussian
DCLS d 23, Kc 26 ('dcls'), in eval mode (FastViT in its training form: its DCLS layers are not folded by the
reparameterisation either), on one constant batch:

* inference: samples/s of the jitted forward (the reference README's throughput);
* train: samples/s of a jitted forward + backward + AdamW update (DCLS recipe: positions x5 LR, no decay).

Prints the DCLS / conv ratio of each next to the reference's (DCLS-Audio README, GPU not stated): ConvNeXt-T
591.4 -> 509.4, ConvFormer-S18 513.3 -> 396.8, FastViT-SA24 633.6 -> 551.7 samples/s. Median over ``--steps``
timed calls after a compile call.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import common
from dcls_jax import optim as dcls_optim
from models import audio_convnext
from models import convformer
from models import dcls_audio
from models import fastvit

FAMILIES = {  # name -> (model class, constructor of the paper's size, reference samples/s with conv, with DCLS)
    "convnext": (audio_convnext.DclsAudioConvNeXt, audio_convnext.DclsAudioConvNeXt.tiny, 591.4, 509.4),
    "convformer": (convformer.ConvFormer, convformer.ConvFormer.s18, 513.3, 396.8),
    "fastvit": (fastvit.FastViT, fastvit.FastViT.sa24, 633.6, 551.7),
}
QUICK_SIZES = {  # two-stage toys with small DCLS kernels, for a smoke test
    "convnext": dict(depths=(1, 1), dims=(8, 16)),
    "convformer": dict(depths=(1, 1), dims=(8, 16), res_scale_stages=(False, True)),
    "fastvit": dict(layers=(1, 1), embed_dims=(8, 32), mlp_ratios=(4, 4), token_mixers=("repmixer", "attention"),
                    pos_embs=(False, True)),
}
QUICK_DWCONVS = {"conv": dict(kind="conv", kernel_size=3),
                 "dcls": dict(kind="dcls", kernel_size=5, kernel_count=3, version="gauss")}


def measure(build, x: jax.Array, steps: int) -> dict[str, float]:
  """Seconds per inference call and per train step of the model ``build()`` returns, on the batch ``x``."""
  module = build()
  module.eval()
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  predict = jax.jit(lambda params, x: nnx.merge(graphdef, params, rest)(x))
  labels = jnp.zeros((x.shape[0], 527), jnp.float32)
  tx = optax.chain(optax.adamw(4e-3, weight_decay=0.05, mask=dcls_optim.weight_decay_mask),
                   dcls_optim.scale_dcls_learning_rates(5.0, 5.0))  # the DCLS-Audio recipe's groups (spec 4.3)

  def loss(params):
    return optax.sigmoid_binary_cross_entropy(nnx.merge(graphdef, params, rest)(x), labels).mean()

  @jax.jit
  def train(params, opt_state):
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  holder = {"params": params, "opt_state": tx.init(params)}

  def train_step():
    holder["params"], holder["opt_state"] = train(holder["params"], holder["opt_state"])
    jax.block_until_ready(holder["params"])

  return {"inference": common.timed(lambda: jax.block_until_ready(predict(params, x)), steps),
          "train": common.timed(train_step, steps)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--frames", type=int, default=1001)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--models", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
  parser.add_argument("--quick", action="store_true", help="two-stage toys on 128 x 64 inputs: a smoke test")
  args = parser.parse_args()
  if args.quick:
    args.batch, args.frames, args.steps = 2, 64, 1
  x = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, dcls_audio.N_MELS, args.frames, 1)),
                  jnp.float32)
  print(f"{common.machine()}; input (batch {args.batch}, {dcls_audio.N_MELS} mel, {args.frames} frames, 1)")
  print("| model | conv inference samples/s | DCLS | ratio | reference ratio | conv train samples/s | DCLS | ratio |")
  print("|---|---|---|---|---|---|---|---|")
  for name in args.models:
    model_class, paper_size, reference_conv, reference_dcls = FAMILIES[name]
    if args.quick:
      build = lambda dwconv: model_class(527, dwconv=QUICK_DWCONVS[dwconv], rngs=nnx.Rngs(0), **QUICK_SIZES[name])
    else:
      build = lambda dwconv: paper_size(dwconv=dwconv, rngs=nnx.Rngs(0))
    seconds = {dwconv: measure(lambda: build(dwconv), x, args.steps) for dwconv in ("conv", "dcls")}
    conv, dcls = seconds["conv"], seconds["dcls"]
    print(f"| {name} | {args.batch / conv['inference']:.2f} | {args.batch / dcls['inference']:.2f} |"
          f" {conv['inference'] / dcls['inference']:.3f} | {reference_dcls / reference_conv:.3f} |"
          f" {args.batch / conv['train']:.2f} | {args.batch / dcls['train']:.2f} |"
          f" {conv['train'] / dcls['train']:.3f} |")


if __name__ == "__main__":
  main()
