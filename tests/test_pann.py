"""PANN CNN6/10/14 and the depthwise-separable variants: the published sizes, parity with a PyTorch re-statement of
the references' blocks (through a checkpoint file), the head's pooling, bn0, dropout and the front end."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import pann
from models import torch_table as tt

# Parameter counts by arithmetic on the references' modules (spec audio.md section 5: 4,837,455 / 5,219,279 /
# 80,753,615; Cnn14Sep 30.47M, Cnn14SepPW 52.85M, Cnn6Next 3.34M, Cnn10Next 6.14M, Cnn14Next 95.1M), and the last
# feature map (time, mel, channels) of a 10 s clip: 1001 frames x 64 mels.
PUBLISHED = {
    "cnn6": (4_837_455, (62, 4, 512)),
    "cnn10": (5_219_279, (62, 4, 512)),
    "cnn14": (80_753_615, (31, 2, 2048)),
    "cnn14_sep": (30_470_543, (31, 2, 2048)),
    "cnn14_sep_pw": (52_846_799, (31, 2, 2048)),
    "cnn6_next": (3_337_935, (62, 3, 512)),
    "cnn10_next": (6_141_519, (124, 7, 512)),
    "cnn14_next": (95_120_975, (31, 1, 2048)),
}

# Tiny networks of every block kind, on 12 mel bins.
TINY = {
    "conv": pann.Variant("conv", (4, 8), (True, False), "xavier_uniform"),
    "conv5x5": pann.Variant("conv5x5", (4, 8), (True, True), "xavier_uniform"),
    "sep": pann.Variant("sep", (4, 8), (True, False), "normal"),
    "sep_pw": pann.Variant("sep_pw", (4, 8), (True, False), "normal"),
    "next": pann.Variant("next", (8, 8, 16), (False, True, False), "normal", stem_width=4, kernel_size=5,
                         block_names=("conv_block11", "conv_block12", "conv_block21")),
}
TINY_FRONT_END = dataclasses.replace(pann.PANN_LOG_MEL, n_mels=12)


def rngs():
  """RBG keys: on CPU, XLA compiles threefry's random bits slowly, anew for every parameter shape."""
  return nnx.Rngs(jax.random.key(0, impl="rbg"))


def tiny(kind, **kwargs):
  return pann.Pann(TINY[kind], num_classes=5, front_end=TINY_FRONT_END, rngs=rngs(), **kwargs)


@nnx.jit
def forward(model, log_mel):
  """``model.from_log_mel``, compiled once per model structure (eager dispatch compiles every op anew)."""
  return model.from_log_mel(log_mel)


def log_mel_batch(frames=20, n_mels=12, seed=0):
  """(3, frames, n_mels) dB-like values, each mel bin with its own offset."""
  x = np.random.RandomState(seed).normal(size=(3, frames, n_mels)) * 10 + np.linspace(-80, -20, n_mels)
  return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_variants_have_the_references_size_and_feature_map(name):
  count, final_map = PUBLISHED[name]
  model = nnx.eval_shape(lambda: pann.Pann(name, rngs=nnx.Rngs(0)))
  assert sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))) == count
  graphdef, state = nnx.split(model)
  clip = jax.ShapeDtypeStruct((2, 1001, 64), jnp.float32)
  frames = jax.eval_shape(lambda state, x: nnx.merge(graphdef, state).frame_features(x), state, clip)
  assert frames.shape == (2, *final_map)


# ---- parity with the references' modules, restated in PyTorch --------------------------------------------

def torch_reference(variant, n_mels, num_classes):
  """The references' network (PANN ``ConvBlock``/``ConvBlock5x5``, topel ``ConvBlockSep``/``ConvBlockSepPW``/
  ``Block``, their stems and head) for one ``Variant``, with their module names; forward on log-mel (B, T, F) ->
  logits, without the dropout layers."""
  torch = pytest.importorskip("torch")
  nn, F = torch.nn, torch.nn.functional

  class ChannelsFirstLayerNorm(nn.LayerNorm):
    def forward(self, x):
      return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

  class ConvBlock(nn.Module):
    def __init__(self, cin, cout, kind):
      super().__init__()
      self.kind, k = kind, 5 if kind == "conv5x5" else 3
      self.conv1, self.bn1 = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)
      if kind != "conv5x5":
        groups = 1 if kind == "conv" else cout
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=groups)
        self.bn2 = nn.BatchNorm2d(cout)
      if kind == "sep_pw":
        self.pwconv1, self.pwconv2 = nn.Linear(cout, 2 * cout), nn.Linear(2 * cout, cout)

    def forward(self, x):
      x = F.relu(self.bn1(self.conv1(x)))
      if self.kind != "conv5x5":
        x = F.relu(self.bn2(self.conv2(x)))
      if self.kind == "sep_pw":
        x = self.pwconv2(F.gelu(self.pwconv1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
      return x

  class NextBlock(nn.Module):
    def __init__(self, cin, cout, k):
      super().__init__()
      self.dwconv, self.norm = nn.Conv2d(cin, cout, k, padding=k // 2, groups=cin), nn.LayerNorm(cout, eps=1e-6)
      self.pwconv1, self.pwconv2 = nn.Linear(cout, 4 * cout), nn.Linear(4 * cout, cout)

    def forward(self, x):
      return self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.bn0 = nn.BatchNorm2d(n_mels)
      if variant.stem_width:
        self.stem = nn.Sequential(nn.Conv2d(1, variant.stem_width, 4, stride=2),
                                  ChannelsFirstLayerNorm(variant.stem_width, eps=1e-6))
      in_dims = (variant.stem_width or 1,) + variant.widths[:-1]
      for name, cin, cout in zip(variant.reference_block_names(), in_dims, variant.widths):
        block = (NextBlock(cin, cout, variant.kernel_size) if variant.block == "next"
                 else ConvBlock(cin, cout, variant.block))
        setattr(self, name, block)
      self.fc1 = nn.Linear(variant.widths[-1], variant.widths[-1])
      self.fc_audioset = nn.Linear(variant.widths[-1], num_classes)

    def forward(self, log_mel):
      x = self.bn0(log_mel[:, None].transpose(1, 3)).transpose(1, 3)
      if variant.stem_width:
        x = self.stem(x)
      for name, pool in zip(variant.reference_block_names(), variant.pools):
        x = getattr(self, name)(x)
        if pool:
          x = F.avg_pool2d(x, 2)
      x = x.mean(dim=3)
      x = x.max(dim=2).values + x.mean(dim=2)
      return self.fc_audioset(F.relu(self.fc1(x)))

  torch.manual_seed(0)
  net = Net()
  with torch.no_grad():  # non-trivial normalisation statistics and affine parameters
    for module in net.modules():
      if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_()
      if isinstance(module, nn.BatchNorm2d):
        module.running_mean.normal_(std=5.0)
        module.running_var.uniform_(0.5, 30.0)
  return torch, net


@pytest.mark.parametrize("kind", sorted(TINY))
def test_matches_the_reference_loaded_from_a_checkpoint_file(kind, tmp_path):
  torch, net = torch_reference(TINY[kind], n_mels=12, num_classes=5)
  state_dict = dict(net.state_dict())
  state_dict["logmel_extractor.melW"] = torch.zeros(513, 12)  # frozen front end: not parameters here
  path = tmp_path / "checkpoint.pth"
  torch.save({"iteration": 7, "model": state_dict}, path)
  model = tiny(kind, dropout=0.0, head_dropout=0.0)
  pann.load_torch_state(model, tt.load_torch_checkpoint(str(path)))

  x = log_mel_batch()
  for mode in ("eval", "train"):  # running statistics, then batch statistics and their update
    getattr(net, mode)()
    getattr(model, mode)()
    expected = net(torch.tensor(np.asarray(x))).detach().numpy()
    with jax.default_matmul_precision("highest"):
      np.testing.assert_allclose(forward(model, x), expected, rtol=1e-5, atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(model.bn0.var[...], net.bn0.running_var.numpy(), rtol=1e-6, err_msg=mode)


def test_load_rejects_a_state_dict_of_another_variant():
  _, net = torch_reference(TINY["sep"], n_mels=12, num_classes=5)
  with pytest.raises(ValueError, match="missing"):
    pann.load_torch_state(tiny("sep_pw"), net.state_dict())


# ---- behaviour -------------------------------------------------------------------------------------------

def test_clip_pool_averages_mel_then_adds_time_max_and_time_mean():
  frames = jnp.asarray([[1.0, 3.0], [0.0, 0.0], [6.0, 2.0]]).reshape(1, 3, 2, 1)  # (B, T, F, C)
  # per-frame mel means 2, 0, 4: max 4 + mean 2
  np.testing.assert_allclose(pann.clip_pool(frames), [[6.0]])


def test_a_config_may_give_a_custom_variant_as_fields():
  fields = dict(block="sep", widths=(4, 8), pools=(True, False), init="normal")
  model = pann.Pann(fields, num_classes=5, front_end=TINY_FRONT_END, rngs=rngs())
  assert model.variant == TINY["sep"]


def test_bn0_normalises_each_mel_bin_over_batch_and_time():
  model = tiny("conv")
  x = log_mel_batch()
  forward(model, x)
  np.testing.assert_allclose(model.bn0.mean[...], 0.1 * np.asarray(x).mean(axis=(0, 1)), rtol=1e-5)


def test_dropout_acts_in_training_only():
  x = log_mel_batch()
  model = tiny("conv")
  model.eval()
  np.testing.assert_array_equal(forward(model, x), forward(model, x))
  model.train()
  assert not np.allclose(forward(model, x), forward(model, x))
  without_dropout = tiny("conv", dropout=0.0, head_dropout=0.0)
  np.testing.assert_array_equal(forward(without_dropout, x), forward(without_dropout, x))


def test_waveform_front_end_is_librosa_64_slaney_mels_in_db():
  librosa = pytest.importorskip("librosa")
  waveform = np.random.RandomState(0).uniform(-0.5, 0.5, (2, 320 * 40)).astype(np.float32)
  model = pann.Pann(TINY["conv"], num_classes=3, rngs=rngs())
  model.eval()
  log_mel = model.log_mel(jnp.asarray(waveform))
  mel = librosa.feature.melspectrogram(y=waveform.astype(np.float64), sr=32000, n_fft=1024, hop_length=320,
                                       center=True, pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=14000)
  expected = 10 * np.log10(np.maximum(mel, 1e-10)).transpose(0, 2, 1)  # (B, T = 41, 64)
  np.testing.assert_allclose(log_mel, expected, atol=2e-3)
  np.testing.assert_allclose(nnx.jit(pann.Pann.__call__)(model, jnp.asarray(waveform)), forward(model, log_mel),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build, match", [
    (lambda: pann.Pann("cnn15", rngs=rngs()), "variant"),
    (lambda: pann.Variant("conv", (4, 8), (True,), "normal"), "pools"),
    (lambda: pann.Variant("next", (4,), (True,), "normal"), "stem_width"),
    (lambda: pann.Pann(pann.Variant("next", (6,), (True,), "normal", stem_width=4), rngs=rngs()),
     "multiple"),
    (lambda: tiny("conv").from_log_mel(log_mel_batch(n_mels=10)), "n_mels=12"),
    (lambda: tiny("next").from_log_mel(log_mel_batch(frames=5)), "at least 6 frames"),
    (lambda: tiny("conv").log_mel(jnp.zeros(4000)), "waveform"),
])
def test_rejects_bad_configuration_and_input(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_spec_augment_masks_the_normalised_log_mels_in_training_only():
  model = pann.Pann("cnn6", num_classes=3, spec_augment=dict(time_width=8, freq_width=4), rngs=nnx.Rngs(0))
  log_mel = jax.random.normal(jax.random.key(0), (2, 64, 64))
  model.eval()
  np.testing.assert_array_equal(model.from_log_mel(log_mel), model.from_log_mel(log_mel))
  model.train()
  normalised = model.bn0(log_mel)
  masked = model.spec_augment(normalised)
  assert 0 < float(jnp.mean(masked == 0)) < 0.5
