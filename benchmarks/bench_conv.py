"""Which convolution algorithm is fastest, per shape and backend: the evidence behind ``conv.choose_algorithm``.

Usage::

  python -m benchmarks.bench_conv [--quick] [--steps N] [--only TEXT]

Times ``dcls_jax.conv.conv`` forward+backward (gradient of sum(y * R) wrt the input and the kernel, R an argument),
jitted, channels-last as the Flax layers run it, for every algorithm that applies ('direct', 'fft', and 'dft' for
1-D), on

* depthwise 2-D convolutions at the four ConvNeXt-T stages (C = 96, 192, 384, 768 at 56, 28, 14, 7 pixels,
  batch 8), 'SAME' padding, square kernels from 3 to 31;
* dense 1-D convolutions of the spiking-delay model (batch 64, 700 -> 256 and 256 -> 256 channels, 100 steps),
  'SAME' padding, 5 to 49 taps.

Prints one row per shape: the median seconds of each algorithm, the fastest, what ``choose_algorithm`` picks on
this backend and how much slower its pick is than the fastest (1.00 = it picked the fastest).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from dcls_jax import conv as conv_lib


def shapes(quick: bool):
  """(label, input shape NHWC / NTC, kernel shape (O, C/G, *k), groups)."""
  out = []
  stages = [(8, 16, 2)] if quick else [(96, 56, 8), (192, 28, 8), (384, 14, 8), (768, 7, 8)]
  for size in ((3, 7) if quick else (3, 5, 7, 9, 13, 17, 23, 31)):
    for channels, pixels, batch in stages:
      out.append((f"dw 2-D C{channels}@{pixels}x{pixels} N{batch} k{size}", (batch, pixels, pixels, channels),
                  (channels, 1, size, size), channels))
  dense = [(16, 8, 20, 2)] if quick else [(700, 256, 100, 64), (256, 256, 100, 64)]
  for taps in ((5, 25) if quick else (5, 9, 13, 17, 25, 49)):
    for cin, cout, steps, batch in dense:
      out.append((f"dense 1-D {cin}->{cout} T{steps} N{batch} k{taps}", (batch, steps, cin), (cout, cin, taps), 1))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
  parser.add_argument("--steps", type=int, default=10, help="timed calls per measurement")
  parser.add_argument("--only", default="", help="run only the shapes whose label contains this text, e.g. 'dense'")
  args = parser.parse_args(argv)
  print(common.machine())
  print("| shape | " + " | ".join(f"{a} s" for a in conv_lib.ALGORITHMS) + " | fastest | chosen | chosen / fastest |")
  print("|---" * (len(conv_lib.ALGORITHMS) + 4) + "|")
  rng = np.random.default_rng(0)
  for label, x_shape, k_shape, groups in shapes(args.quick):
    if args.only not in label:
      continue
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)

    def loss(x, kernel, r, algorithm):
      y = conv_lib.conv(x, kernel, padding="SAME", feature_group_count=groups, algorithm=algorithm)
      return jnp.sum(y * r)

    r = jnp.ones(x_shape[:-1] + k_shape[:1], jnp.float32)  # 'SAME', stride 1: the input's extent, O channels
    seconds = {}
    for algorithm in conv_lib.ALGORITHMS:
      if algorithm == "dft" and len(x_shape) != 3:
        continue
      grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=3)
      seconds[algorithm] = common.timed(lambda: jax.block_until_ready(grad(x, kernel, r, algorithm)), args.steps)
    padded = list(x_shape)
    for axis, size in zip(range(1, len(x_shape) - 1), k_shape[2:]):
      padded[axis] += size - 1
    chosen = conv_lib.choose_algorithm(padded, k_shape, strides=1, feature_group_count=groups)
    fastest = min(seconds, key=seconds.get)
    cells = " | ".join(f"{seconds[a]:.5f}" if a in seconds else "-" for a in conv_lib.ALGORITHMS)
    print(f"| {label} | {cells} | {fastest} | {chosen} | {seconds[chosen] / seconds[fastest]:.2f} |", flush=True)


if __name__ == "__main__":
  main()
