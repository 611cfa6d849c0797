"""Speed and kernel-construction memory of dcls-jax vs the PyTorch reference (``dcls==0.1.1``, import ``DCLS``).

Usage::

  python -m benchmarks.bench_dcls [--quick] [--repeats N] [--budget S] [--only TEXT] [--reference-device D]

Runs, in one process, our layer (``DclsSpec.apply`` under ``jax.jit``, on jax's default backend) and the reference
``DCLS.construct.modules.Dcls2d`` / ``Dcls1d`` (use_implicit_gemm=False; torch on the GPU when jax runs on one and
torch sees a CUDA device, else on the CPU with its default thread count) on:

* ConvNeXt-T depthwise layers, batch 8: C = 96@56x56, 192@28x28, 384@14x14, 768@7x7, each for the ``v0`` recipe
  (d = 17, Kc = 34, padding 8) and the ``gauss`` recipe (d = 23, Kc = 26, padding 11);
* the spiking-delay layer (SNN-delays): Dcls1d 700 -> 256, groups 1, gauss, d = 25, Kc = 1, input (64, 700, 100),
  symmetric padding 12 (SNN-delays left-pads 24 instead; same amount of work, output length 100 either way).

Both sides use the same parameter values (drawn by the reference layer, imported with
``torch_io.params_from_reference``) and the reference's (N, C, *spatial) layout (``channels_first=True``).
For each shape: forward (reference under ``torch.no_grad``) and forward+backward (gradient of sum(y * R) wrt the
input and every parameter), median over repeats after one warm-up call (compile excluded, ``block_until_ready``).
Slow calls get fewer repeats: repeats = clamp(budget / first-call seconds, 1, N).

Ours runs for construction in (separable, scatter) x conv algorithm in (direct, fft, dft, auto); scatter x direct
is skipped (one direct row per shape), dft runs on the 1-D shape only. The cotangent R is an argument of the jitted
gradient, as a real upstream gradient would be (a constant R would let XLA fold part of the backward pass). The
default layer is the row of ``kernels.default_method`` (what ``auto`` construction resolves to: scatter for v0 on
CPU, separable for gauss) with the ``auto`` conv; the summary uses it.

Construction memory (batch-independent, kernel only, fwd+bwd): ours = temp + output bytes of the compiled
gradient of sum(kernel * Rk) wrt weight/positions/sigmas (``memory_analysis()``); the reference's = bytes of the
tensors autograd saves for backward during ``layer.DCK(weight, P, SIG)`` (each storage once) plus the kernel.

``--quick``: tiny shapes, 1 repeat: a smoke test of the whole script in seconds.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp
import torch

from dcls_jax import conv as conv_lib
from dcls_jax import kernels as kernels_lib
from dcls_jax import torch_io

logging.getLogger().setLevel(logging.ERROR)  # the reference warns about implicit GEMM / CUDA at construction

CONFIGS = (("separable", "direct"), ("separable", "fft"), ("separable", "dft"), ("separable", "auto"),
           ("scatter", "fft"), ("scatter", "dft"), ("scatter", "auto"))
TARGET_SPEEDUP = 5.0
TARGET_MEMORY = 0.1


def shapes(quick: bool):
  """(label, class_name, reference kwargs, input shape NC*)."""
  out = []
  convnext = [(8, 16, 2)] if quick else [(96, 56, 8), (192, 28, 8), (384, 14, 8), (768, 7, 8)]
  for version, d, kc in (("v0", 17, 34), ("gauss", 23, 26)):
    for c, hw, n in convnext:
      kwargs = dict(in_channels=c, out_channels=c, kernel_count=kc, dilated_kernel_size=d, padding=d // 2,
                    groups=c, bias=True, version=version, use_implicit_gemm=False)
      out.append((f"dw {version} C{c}@{hw}x{hw} N{n} d{d} Kc{kc}", "Dcls2d", kwargs, (n, c, hw, hw)))
  cin, cout, t, n = (16, 8, 20, 2) if quick else (700, 256, 100, 64)
  kwargs = dict(in_channels=cin, out_channels=cout, kernel_count=1, dilated_kernel_size=25, padding=12,
                groups=1, bias=True, version="gauss")
  out.append((f"snn 1d {cin}->{cout} T{t} N{n} d25 Kc1 pad12", "Dcls1d", kwargs, (n, cin, t)))
  return out


def reference_device(requested: str | None) -> str:
  """The torch device of the reference: ``requested``, else the kind jax runs on (cuda for a GPU backend)."""
  if requested:
    return requested
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def timeit(fn, repeats: int, budget: float):
  """Median seconds of fn() after one warm-up; fewer repeats when a call is slow. Returns (median, n)."""
  fn()  # warm-up (and compile, for jitted fns)
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  n = int(max(1, min(repeats, budget / max(first, 1e-9))))
  times = [first]
  for _ in range(n - 1):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), len(times)


# ---- reference ------------------------------------------------------------------------------------
def reference_layer(class_name, kwargs, seed=0):
  """The reference layer on the CPU, drawn from ``seed`` (so its parameters do not depend on the device)."""
  from DCLS.construct import modules
  torch.manual_seed(seed)
  layer = getattr(modules, class_name)(**kwargs)
  with torch.no_grad():  # distinct widths per element, so the comparison exercises SIG (init is constant)
    if getattr(layer, "SIG", None) is not None:
      layer.SIG.add_(0.1 * torch.rand_like(layer.SIG))
  return layer


def reference_construction_bytes(layer) -> int:
  """Bytes autograd saves during DCK(weight, P, SIG) (each storage once) + the kernel."""
  seen = {}

  def pack(t):
    key = (t.untyped_storage().data_ptr(), t.dtype)
    seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return t

  with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    kernel = layer.DCK(layer.weight, layer.P, layer.SIG)
  return sum(seen.values()) + kernel.numel() * kernel.element_size()


def ours_construction_bytes(spec, params) -> int:
  names = [k for k in ("weight", "positions", "sigmas") if k in params]
  rk = jnp.asarray(np.random.default_rng(1).standard_normal(
      (spec.out_features, spec.in_features // spec.feature_group_count) + spec.kernel_spatial_shape), jnp.float32)

  def loss(p):
    return jnp.sum(spec.kernel(p["weight"], p["positions"], p.get("sigmas")) * rk)

  sub = {k: params[k] for k in names}
  mem = jax.jit(jax.grad(loss)).lower(sub).compile().memory_analysis()
  return int(mem.temp_size_in_bytes + mem.output_size_in_bytes)


def fmt_s(t):
  return "-" if t is None else (f"{t:.4f}" if t < 10 else f"{t:.2f}")


def fmt_mb(b):
  return f"{b / 2**20:.2f} MB"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat (smoke test)")
  ap.add_argument("--repeats", type=int, default=None, help="max timed repeats per measurement (default 5; 1 quick)")
  ap.add_argument("--budget", type=float, default=None,
                  help="seconds per measurement that bound the repeats of slow calls (default 4)")
  ap.add_argument("--only", default="", help="run only the shapes whose label contains this text, e.g. 'snn'")
  ap.add_argument("--reference-device", default=None,
                  help="torch device of the reference, e.g. 'cpu' or 'cuda' (default: cuda when jax runs on a GPU)")
  args = ap.parse_args(argv)
  repeats = args.repeats or (1 if args.quick else 5)
  budget = args.budget if args.budget is not None else (0.0 if args.quick else 4.0)

  device = reference_device(args.reference_device)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  print(f"machine: processor={platform.processor() or platform.machine()!r}, cpu_count={os.cpu_count()}, "
        f"torch threads={torch.get_num_threads()}, jax {jax.__version__}, torch {torch.__version__}, "
        f"jax backend={jax.default_backend()} ({jax.devices()[0].device_kind}), reference on {device}, "
        f"load avg={os.getloadavg()}")
  print(f"repeats <= {repeats} (fewer for calls slower than {budget:.1f}s / repeats; min 1), "
        f"median after 1 warm-up; reference fwd under torch.no_grad; float32\n")
  sys.stdout.flush()

  header = ("| shape | ours config (constr/conv) | ref fwd s | ours fwd s | ref fwd+bwd s | ours fwd+bwd s "
            "| ratio ref/ours fwd+bwd | constr. mem ref / ours / ratio | max abs dy | reps ref/ours |")
  rows = [header, "|" + "---|" * (header.count("|") - 1)]
  summaries = []
  t_start = time.perf_counter()

  for label, class_name, kwargs, in_shape in shapes(args.quick):
    if args.only not in label:
      continue
    t_shape = time.perf_counter()
    ref = reference_layer(class_name, kwargs)
    params = {k: jnp.asarray(v) for k, v in
              torch_io.params_from_reference(class_name, kwargs, ref.state_dict()).items()}
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal(in_shape).astype(np.float32)
    ref = ref.to(device)
    x_t = torch.from_numpy(x_np).to(device)
    with torch.no_grad():
      y_ref = ref(x_t)
    r_np = rng.standard_normal(tuple(y_ref.shape)).astype(np.float32)

    # reference timings
    r_t = torch.from_numpy(r_np).to(device)
    ref_params = [p for p in ref.parameters() if p.requires_grad]

    def ref_fwd():
      with torch.no_grad():
        y = ref(x_t)
      sync()
      return y

    def ref_fwd_bwd():
      xg = x_t.detach().requires_grad_(True)
      loss = (ref(xg) * r_t).sum()
      grads = torch.autograd.grad(loss, [xg] + ref_params)
      sync()
      return grads

    ref_fwd_s, n_ref_f = timeit(ref_fwd, repeats, budget)
    ref_fb_s, n_ref_fb = timeit(ref_fwd_bwd, repeats, budget)
    ref_mem = reference_construction_bytes(ref)
    y_ref_np = y_ref.cpu().numpy()

    x_j = jnp.asarray(x_np)
    r_j = jnp.asarray(r_np)
    mem_ours = {}
    auto_algo = None
    for construction, algorithm in CONFIGS:
      if algorithm == "dft" and len(in_shape) != 3:
        continue
      spec = torch_io.spec_from_reference(class_name, kwargs, channels_first=True, conv_algorithm=algorithm,
                                          construction=construction)
      if algorithm == "auto" and auto_algo is None:
        pads = [p for p in torch_io._per_axis(kwargs["padding"], len(in_shape) - 2, "padding")]
        padded = list(in_shape[:2]) + [s + 2 * p for s, p in zip(in_shape[2:], pads)]
        kshape = (spec.out_features, spec.in_features // spec.feature_group_count) + spec.kernel_spatial_shape
        auto_algo = conv_lib.choose_algorithm(padded, kshape, strides=spec.strides,
                                              feature_group_count=spec.feature_group_count, channels_first=True)

      def fwd(x, p, spec=spec):
        return spec.apply(x, p["weight"], p["positions"], p.get("sigmas"), p.get("bias"))

      def loss(x, p, r, spec=spec):
        return jnp.sum(fwd(x, p) * r)

      fwd_j = jax.jit(fwd)
      grad_j = jax.jit(jax.grad(loss, argnums=(0, 1)))
      y = np.asarray(fwd_j(x_j, params))
      dy = float(np.max(np.abs(y - y_ref_np)))
      ours_f, n_f = timeit(lambda: jax.block_until_ready(fwd_j(x_j, params)), repeats, budget)
      ours_fb, n_fb = timeit(lambda: jax.block_until_ready(grad_j(x_j, params, r_j)), repeats, budget)
      if construction not in mem_ours:
        mem_ours[construction] = ours_construction_bytes(spec, params)
      m = mem_ours[construction]
      algo_name = f"auto->{auto_algo}" if algorithm == "auto" else algorithm
      ratio = ref_fb_s / ours_fb
      rows.append(f"| {label} | {construction}/{algo_name} | {fmt_s(ref_fwd_s)} | {fmt_s(ours_f)} | "
                  f"{fmt_s(ref_fb_s)} | {fmt_s(ours_fb)} | {ratio:.1f}x | {fmt_mb(ref_mem)} / {fmt_mb(m)} / "
                  f"{m / ref_mem:.3f} | {dy:.1e} | {n_ref_f},{n_ref_fb}/{n_f},{n_fb} |")
      print("[progress] " + rows[-1], file=sys.stderr, flush=True)
      if construction == kernels_lib.default_method(kwargs["version"]) and algorithm == "auto":
        mratio = m / ref_mem
        summaries.append(
            f"- {label}: default layer (construction auto = {kernels_lib.default_method(kwargs['version'])}, "
            f"conv auto -> {auto_algo}): fwd+bwd {ratio:.1f}x faster than the reference "
            f"(target >= {TARGET_SPEEDUP:.0f}x: {'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}); "
            f"construction memory {mratio:.3f} of the reference's "
            f"(target <= {TARGET_MEMORY:.2f}: {'met' if mratio <= TARGET_MEMORY else 'NOT met'})")
    print(f"[{label}: {time.perf_counter() - t_shape:.0f}s]", file=sys.stderr, flush=True)

  print("\n".join(rows))
  print("\nSummary (targets: >= 5x faster fwd+bwd, <= 1/10 construction memory):")
  print("\n".join(summaries))
  print(f"\ntotal {time.perf_counter() - t_start:.0f}s; load avg at end={os.getloadavg()}")


if __name__ == "__main__":
  main()
