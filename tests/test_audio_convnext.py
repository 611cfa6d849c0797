"""The ConvNeXt audio taggers: ConvNeXt-audio (topel, raw waveform in) and DCLS-Audio's ConvNeXt (log-mels in).

Numerical parity with the reference fixtures runs in ``tests/test_parity_fixtures.py`` (archs ``audio_convnext`` and
``dcls_audio_convnext``); here: sizes, layouts, the frozen filterbank, sharing, state dicts and checkpoints.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import audio_convnext
from models import audio_convnext_io
from models import audio_frontend
from models import parity
from models import torch_table
from tests import test_parity_fixtures

FIXTURES = test_parity_fixtures.fixtures("audio_convnext") + test_parity_fixtures.fixtures("dcls_audio_convnext")
GAUSS = dict(kind="dcls", kernel_size=5, kernel_count=3, version="gauss")


def topel(**kwargs) -> audio_convnext.AudioConvNeXt:
  """Two stages (1 block each, 4 and 8 channels), 3 classes, the real 224-mel front end."""
  return audio_convnext.AudioConvNeXt(3, **(dict(depths=(1, 1), dims=(4, 8), rngs=nnx.Rngs(0)) | kwargs))


def dcls_audio(dwconv=GAUSS, **kwargs) -> audio_convnext.DclsAudioConvNeXt:
  """Two stages (2 and 1 blocks, 4 and 8 channels), 3 classes, DCLS d 5 with 3 elements."""
  kwargs = dict(depths=(2, 1), dims=(4, 8), dwconv=dwconv, rngs=nnx.Rngs(0)) | kwargs
  return audio_convnext.DclsAudioConvNeXt(3, **kwargs)


def waveforms(seconds=0.25, n=2, seed=1):
  return 0.1 * jax.random.normal(jax.random.key(seed), (n, int(32000 * seconds)))


def log_mels(n=2, seed=1):
  """(n, 16 mel, 64 frames, 1): stem (2, 16) -> 8 x 4 -> stage 2: 4 x 2."""
  return jax.random.normal(jax.random.key(seed), (n, 16, 64, 1))


def num_params(model) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def reference_state(model) -> dict[str, np.ndarray]:
  return audio_convnext_io.to_torch(model, nnx.to_pure_dict(nnx.state(model)))


def outputs(model):
  model.eval()
  return model(waveforms()) if isinstance(model, audio_convnext.AudioConvNeXt) else model(log_mels())


# ---- sizes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, count", [
    (lambda: audio_convnext.AudioConvNeXt.tiny(rngs=nnx.Rngs(0)), 28_222_767),  # spec 3.3, bn0 affine included
    (lambda: audio_convnext.DclsAudioConvNeXt.tiny(rngs=nnx.Rngs(0)), 28_221_263),  # spec 3.2, DCLS d 23 / 26
    (lambda: audio_convnext.DclsAudioConvNeXt.tiny(dwconv="conv", rngs=nnx.Rngs(0)), 28_223_855),  # dense 7x7
], ids=["topel", "dcls_audio_dcls", "dcls_audio_conv"])
def test_convnext_t_taggers_have_the_published_parameter_counts(build, count):
  assert num_params(nnx.eval_shape(build)) == count


def test_stems_give_the_papers_shapes_on_10_s_clips():
  """Spec 3.3: 1001 frames x 224 mels -> 252 x 56 (padding 4 on time only); 3.2: 128 mels x 1001 -> 64 x 62."""
  apply = lambda stem, x: stem(x)
  stem = nnx.eval_shape(topel).downsample_layers[0]
  assert nnx.eval_shape(apply, stem, jnp.zeros((1, 1001, 224, 1))).shape == (1, 252, 56, 4)
  stem = nnx.eval_shape(dcls_audio).downsample_layers[0]
  assert nnx.eval_shape(apply, stem, jnp.zeros((1, 128, 1001, 1))).shape == (1, 64, 62, 4)


# ---- ConvNeXt-audio: front end, bn0, embeddings ---------------------------------------------------------------

def test_mel_matrix_is_a_frozen_constant_of_the_recipe():
  model = topel()
  assert isinstance(model.melW, audio_convnext.Filterbank)
  np.testing.assert_array_equal(model.melW[...], audio_frontend.CONVNEXT_AUDIO.mel_matrix().astype(np.float32))
  grads = nnx.eval_shape(nnx.grad(lambda m: jnp.sum(m(waveforms()))), model)
  assert "melW" not in nnx.to_pure_dict(grads) and "melW" not in nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert "bn0" in nnx.to_pure_dict(grads)


def test_embeddings_are_the_stages_of_one_forward():
  model = topel()
  model.eval()
  wave = waveforms()  # 26 frames -> stem 8 x 56 -> 4 x 28
  frames = model.frame_embeddings(wave)
  assert frames.shape == (2, 4, 28, 8)
  scene = model.scene_embedding(wave)
  np.testing.assert_allclose(scene, model.pool(frames), rtol=1e-6)
  logits = model(wave)
  np.testing.assert_allclose(logits, model.head_audioset(scene), rtol=1e-6)
  np.testing.assert_allclose(model.clipwise_output(wave), jax.nn.sigmoid(logits), rtol=1e-6)


def test_pooling_is_mean_over_mel_then_max_plus_mean_over_time():
  model = topel()
  frames = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))  # (B, T', F', C)
  per_frame = np.mean(np.asarray(frames), axis=2)
  expected = model.norm(jnp.asarray(per_frame.max(axis=1) + per_frame.mean(axis=1)))
  np.testing.assert_allclose(model.pool(frames), expected, rtol=1e-5, atol=1e-6)


def test_spec_augment_after_bn0_only_when_asked():
  x = jax.random.normal(jax.random.key(0), (2, 101, 224))
  plain = topel()
  np.testing.assert_array_equal(plain.normalize(x), plain.bn0(x))
  augmented = topel(spec_augment=dict(time_width=10, freq_width=5))
  y = np.asarray(augmented.normalize(x))
  assert np.any(y == 0) and np.any(y != 0)
  np.testing.assert_array_equal(y[y != 0], np.asarray(augmented.bn0(x))[y != 0])


# ---- DCLS-Audio: positions shared by growing width, the dense baseline, the reference init ----------------------

def test_dcls_positions_are_one_leaf_per_stage_and_weights_one_per_layer():
  model = dcls_audio()
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  names = [path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert names.count("positions") == names.count("sigmas") == 2 and names.count("weight") == 3
  first, second = model.stages[0]
  assert first.dwconv.positions is second.dwconv.positions and first.dwconv.weight is not second.dwconv.weight


def test_dcls_layers_start_as_the_reference():
  """Spec 4.1, the default dwconv: d 23 with 26 elements, positions N(0, 0.5^2) clamped to +-d // 2, sigmas 0.23,
  bias 0."""
  dwconv = audio_convnext.DclsAudioConvNeXt(3, depths=(1,), dims=(64,), rngs=nnx.Rngs(0)).stages[0][0].dwconv
  assert dwconv.weight.shape == (64, 1, 26) and dwconv.kernel().shape == (64, 1, 23, 23)
  np.testing.assert_array_equal(dwconv.sigmas[...], 0.23 * np.ones((2, 64, 1, 26), np.float32))
  positions = np.asarray(dwconv.positions[...])
  assert np.abs(positions).max() <= 11 and 0.4 < positions.std() < 0.6
  np.testing.assert_array_equal(dwconv.bias[...], 0)


def test_dense_baseline_has_no_positions():
  model = dcls_audio(dwconv=dict(kind="conv", kernel_size=7))
  assert model.stages[0][0].dwconv.kernel.shape == (7, 7, 1, 4)
  assert model(log_mels()).shape == (2, 3)
  assert model.features(log_mels()).shape == (2, 8)


# ---- state dicts and checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [topel, dcls_audio], ids=["topel", "dcls_audio"])
def test_torch_state_round_trip_reproduces_the_model(build):
  source = build()
  state = reference_state(source)
  target = build(rngs=nnx.Rngs(7))
  audio_convnext_io.load_torch_state(target, state)
  np.testing.assert_array_equal(outputs(target), outputs(source))
  assert reference_state(target).keys() == state.keys()


def test_topel_state_dict_has_the_reference_names_and_layouts():
  state = reference_state(topel())
  assert list(state)[:2] == ["logmel_extractor.melW", "bn0.weight"]
  assert state["logmel_extractor.melW"].shape == (513, 224)
  assert state["downsample_layers.0.0.weight"].shape == (4, 1, 4, 4)  # OIHW
  assert state["head_audioset.weight"].shape == (3, 8) and "bn0.num_batches_tracked" in state


@pytest.mark.parametrize("wrapping", [None, "model"])
def test_pth_checkpoint_import_ignores_the_dft_kernels(wrapping, tmp_path):
  torch = pytest.importorskip("torch")
  source = topel()
  state = {name: torch.from_numpy(np.array(value)) for name, value in reference_state(source).items()}
  state |= {f"spectrogram_extractor.stft.conv_{part}.weight": torch.zeros(513, 1, 1024) for part in ("real", "imag")}
  torch.save(state if wrapping is None else {wrapping: state, "iteration": 75000}, tmp_path / "ckpt.pth")
  target = topel(rngs=nnx.Rngs(3))
  audio_convnext_io.load_checkpoint(target, tmp_path / "ckpt.pth")
  np.testing.assert_array_equal(outputs(target), outputs(source))


def test_safetensors_checkpoint_import(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  source = dcls_audio()
  safetensors_numpy.save_file(reference_state(source), str(tmp_path / "ckpt.safetensors"))
  target = dcls_audio(rngs=nnx.Rngs(3))
  audio_convnext_io.load_checkpoint(target, str(tmp_path / "ckpt.safetensors"))
  np.testing.assert_array_equal(outputs(target), outputs(source))


def test_bad_state_dicts_are_refused_with_the_name_at_fault():
  model = topel()
  state = reference_state(model)
  load = lambda state: audio_convnext_io.load_torch_state(model, state)
  with pytest.raises(ValueError, match=r"missing \['bn0.running_var'\]"):
    load({k: v for k, v in state.items() if k != "bn0.running_var"})
  with pytest.raises(ValueError, match=r"missing \['logmel_extractor.melW'\]"):
    load({k: v for k, v in state.items() if k != "logmel_extractor.melW"})
  with pytest.raises(ValueError, match=r"state_dict\['head_audioset.weight'\] has shape \(3, 9\); .* expects \(3, 8\)"):
    load(state | {"head_audioset.weight": np.zeros((3, 9), np.float32)})
  htk = audio_frontend.DCLS_AUDIO.mel_matrix()  # 128 HTK mels
  with pytest.raises(ValueError, match=r"melW'\] has shape \(513, 128\)"):
    load(state | {"logmel_extractor.melW": htk})
  with pytest.raises(ValueError, match=r"melW'\] is not the filterbank of the model's front end"):
    load(state | {"logmel_extractor.melW": 2 * state["logmel_extractor.melW"]})
  dcls = dcls_audio()
  state = reference_state(dcls)
  with pytest.raises(ValueError, match=r"stages.0.1.dwconv.SIG.* differs from .*stages.0.0.dwconv.SIG"):
    audio_convnext_io.load_torch_state(dcls, state | {"stages.0.1.dwconv.SIG": state["stages.0.1.dwconv.SIG"] + 1})


@pytest.mark.skipif(not FIXTURES, reason="no audio_convnext / dcls_audio_convnext fixtures")
@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_fixture_state_round_trips_with_one_leaf_per_shared_tensor(path):
  meta, arrays = parity.load(path)
  build = {"audio_convnext": audio_convnext_io.audio_convnext_from_reference,
           "dcls_audio_convnext": audio_convnext_io.dcls_audio_convnext_from_reference}[meta["arch"]]
  model = nnx.eval_shape(lambda: build(meta["config"]))
  state = torch_table.fixture_state(arrays)
  audio_convnext_io.load_torch_state(model, state)
  back = reference_state(model)
  assert back.keys() == state.keys()
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)
  depths = meta["config"]["depths"]
  if meta["arch"] == "audio_convnext":
    repeated = 1  # melW: a Filterbank, neither a parameter nor a buffer
  else:
    repeated = 2 * (sum(depths) - len(depths))  # P and SIG of a stage, under each of its blocks but the first
  assert len(jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))) == len(state) - repeated


# ---- bad configurations ---------------------------------------------------------------------------------------

def test_bad_configurations_are_refused():
  with pytest.raises(ValueError, match=r"depths=\(1, 1\) and dims=\(4,\)"):
    topel(depths=(1, 1), dims=(4,))
  with pytest.raises(ValueError, match="frontend.norm_mean=-18.2696"):
    topel(frontend=audio_frontend.DCLS_AUDIO)
  with pytest.raises(ValueError, match="config.use_torchaudio=True"):
    audio_convnext_io.audio_convnext_from_reference(dict(use_torchaudio=True))
  with pytest.raises(ValueError, match="config.stem_bias=False"):
    audio_convnext_io.dcls_audio_convnext_from_reference(dict(stem_bias=False))
  with pytest.raises(ValueError, match="dwconv kind='dense'"):
    dcls_audio(dwconv=dict(kind="dense"))
  with pytest.raises(ValueError, match=r"dwconv='gauss': expected one of \['conv', 'dcls'\]"):
    audio_convnext.DclsAudioConvNeXt.tiny(dwconv="gauss", rngs=nnx.Rngs(0))
