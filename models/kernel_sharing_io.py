"""Reference state dicts of the kernel-sharing models <-> ``ConvMixer`` / ``SEResNet``; fixtures ``ks_convmixer``,
``ks_seresnet``.

The conversions are ``models.torch_table`` tables. The reference names:

  ConvMixer (one ``nn.Sequential``)   ``0`` stem conv, ``2`` stem BN; block i: ``{3+i}.0.fn.0`` depthwise conv (or
                                      DCLS: weight, P, SIG, bias), ``{3+i}.0.fn.2`` BN, ``{3+i}.1`` pointwise conv,
                                      ``{3+i}.3`` BN; ``{5+depth}`` head Linear
  SE-ResNet (``CifarNet``)            ``conv1``, ``bn1``; ``layer{s+1}.{b}.{conv1,bn1,conv2,bn2}``,
                                      ``.se.fc.0`` / ``.se.fc.2`` (SE Linears), ``.downsample.0`` / ``.downsample.1``
                                      (projection conv, BN); ``fc``

A shared tensor is listed by the reference under every layer that uses it; all those names resolve to the model's
one leaf (import checks they agree; export writes the leaf, or its summed gradient, under every name).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from models import convmixer
from models import convnext
from models import seresnet
from models import torch_table as tt

Model = Union[convmixer.ConvMixer, seresnet.SEResNet]


def convmixer_entries(model: convmixer.ConvMixer) -> list[tt.Entry]:
  """The table of a ``ConvMixer``: one entry per name of the reference's ``state_dict()``."""
  entries = tt.module("0", ("stem", "conv"), tt.CONV) + tt.module("2", ("stem", "norm"), tt.BATCH)
  for i, block in enumerate(model.blocks):
    path, prefix = ("blocks", i), str(3 + i)
    dwconv = (tt.dcls(block.dwconv.spec.version) if isinstance(block.dwconv, dcls_nnx.DclsConv) else tt.CONV)
    entries += (tt.module(f"{prefix}.0.fn.0", path + ("dwconv",), dwconv)
                + tt.module(f"{prefix}.0.fn.2", path + ("dwnorm",), tt.BATCH)
                + tt.module(f"{prefix}.1", path + ("pwconv",), tt.CONV)
                + tt.module(f"{prefix}.3", path + ("pwnorm",), tt.BATCH))
  return entries + tt.module(str(5 + len(model.blocks)), ("head",), tt.LINEAR)


def seresnet_entries(model: seresnet.SEResNet) -> list[tt.Entry]:
  """The table of an ``SEResNet``: one entry per name of the reference's ``state_dict()``."""
  weight = ("weight",)
  entries = tt.module("conv1", ("conv1",), tt.CONV, only=weight) + tt.module("bn1", ("bn1",), tt.BATCH)
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      path, prefix = ("stages", s, b), f"layer{s + 1}.{b}"
      entries += (tt.module(f"{prefix}.conv1", path + ("conv1",), tt.CONV, only=weight)
                  + tt.module(f"{prefix}.bn1", path + ("bn1",), tt.BATCH)
                  + tt.module(f"{prefix}.conv2", path + ("conv2",), tt.CONV, only=weight)
                  + tt.module(f"{prefix}.bn2", path + ("bn2",), tt.BATCH)
                  + tt.module(f"{prefix}.se.fc.0", path + ("se", "reduce"), tt.LINEAR, only=weight)
                  + tt.module(f"{prefix}.se.fc.2", path + ("se", "expand"), tt.LINEAR, only=weight))
      if block.downsample is not None:
        entries += (tt.module(f"{prefix}.downsample.0", path + ("downsample", "conv"), tt.CONV, only=weight)
                    + tt.module(f"{prefix}.downsample.1", path + ("downsample", "norm"), tt.BATCH))
  return entries + tt.module("fc", ("head",), tt.LINEAR)


def reference_entries(model: Model) -> list[tt.Entry]:
  """The table of either model."""
  if isinstance(model, convmixer.ConvMixer):
    return convmixer_entries(model)
  if isinstance(model, seresnet.SEResNet):
    return seresnet_entries(model)
  raise ValueError(f"model is a {type(model).__name__}; expected a ConvMixer or an SEResNet")


def load_torch_state(model: Model, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict (parameters and BatchNorm buffers) into ``model``, in place."""
  tt.load_torch_state(model, reference_entries(model), state_dict)


def to_torch(model: Model, tree: Mapping) -> dict[str, np.ndarray]:
  """``model``'s variables, or their gradients, as a pure dict -> the reference's names and layouts."""
  return tt.to_torch(model, reference_entries(model), tree)


def load_checkpoint(model: Model, path: str, key: Optional[str] = None) -> None:
  """Loads a reference checkpoint (``.pth`` or ``.safetensors``, see ``torch_table.load_torch_checkpoint``)."""
  load_torch_state(model, tt.load_torch_checkpoint(path, key))


# ---- the reference fixtures ---------------------------------------------------------------------------------

def convmixer_from_reference(config: Mapping[str, Any], *, conv_algorithm: str = "auto") -> convmixer.ConvMixer:
  """A ``ConvMixer`` from the reference's arguments (a ``ks_convmixer`` fixture's ``meta.config``)."""
  dwconv = convnext.DepthwiseConfig(kind="conv", kernel_size=config["kernel_size"], conv_algorithm=conv_algorithm)
  return convmixer.ConvMixer(config["dim"], config["depth"], config["n_classes"], dilation=config["dilation"],
                             patch_size=config["patch_size"], share_kernels=config["apply_kernel_sharing"],
                             dwconv=dwconv, rngs=nnx.Rngs(config.get("seed", 0)))


def seresnet_from_reference(config: Mapping[str, Any]) -> seresnet.SEResNet:
  """An ``SEResNet`` from the reference's arguments (a ``ks_seresnet`` fixture's ``meta.config``); the reference's
  ``sync`` false turns every stage's sharing off."""
  if config.get("new_resnet", False):
    raise ValueError("config.new_resnet=True: the pre-activation block is not implemented (the runs use False)")
  return seresnet.SEResNet(
      config["num_classes"], n_size=config["n_size"], widths=config["widths"],
      stem_width=config.get("stem_width", 16), reduction=config["reduction"],
      share_stages=[bool(config.get("sync", True) and share) for share in config["share_stages"]],
      dropout=config.get("dropout", 0.0), rngs=nnx.Rngs(config.get("seed", 0)))


def _run_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray], build: Callable[[], Model],
                 map_names: Sequence[str]) -> dict[str, np.ndarray]:
  """Loads ``state/`` into the model ``build`` makes, feeds ``input/x`` (NCHW) and returns the logits, the feature
  maps (NCHW, named ``map_names``), the pooled features and, in train mode, the mean cross-entropy, every BatchNorm
  buffer after the update (``state_after/``) and the gradient of every reference parameter."""
  model = tt.fixture_model(meta, arrays, build, load_torch_state)
  entries = reference_entries(model)
  train = meta["mode"] == "train"
  x = jnp.transpose(jnp.asarray(arrays["input/x"], jnp.float32), (0, 2, 3, 1))

  def forward(model):
    maps = model.feature_maps(x)
    pooled = jnp.mean(maps[-1], axis=(1, 2))
    logits = model.head(pooled)
    out = {f"output/features/{name}": jnp.transpose(y, (0, 3, 1, 2)) for name, y in zip(map_names, maps)}
    out.update({"output/features/pooled": pooled, "output/logits": logits})
    if train:
      out["output/loss"] = optax.softmax_cross_entropy_with_integer_labels(logits, arrays["input/labels"]).mean()
    return out

  return tt.run_forward(model, entries, forward, train=train)


def run_convmixer_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``ks_convmixer``: logits, ``features/stem``, ``features/block{i}``, ``features/pooled``; in train mode also
  the loss, ``state_after/*`` and ``grad/*`` (a shared tensor's summed gradient under every alias)."""
  config = meta["config"]
  names = ["stem"] + [f"block{i}" for i in range(config["depth"])]
  return _run_fixture(meta, arrays, lambda: convmixer_from_reference(config, conv_algorithm="direct"), names)


def run_seresnet_fixture(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arch ``ks_seresnet``: logits, ``features/stem``, ``features/layer{1,2,3}``, ``features/pooled``; in train mode
  also the loss, ``state_after/*`` and ``grad/*`` (a shared kernel's summed gradient under every alias)."""
  config = meta["config"]
  if config.get("dropout", 0.0) != 0.0:
    raise ValueError(f"config.dropout={config['dropout']!r}: a fixture's forward must be deterministic (0)")
  return _run_fixture(meta, arrays, lambda: seresnet_from_reference(config), ["stem", "layer1", "layer2", "layer3"])
