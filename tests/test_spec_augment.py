"""models.spec_augment: torchlibrosa's SpecAugmentation as a training-mode module."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.spec_augment import SpecAugment


def stripes(mask: np.ndarray) -> list[tuple[int, int]]:
  """(start, width) of the runs of False in a 1-D keep mask."""
  runs, start = [], None
  for i, keep in enumerate(list(mask) + [True]):
    if not keep and start is None:
      start = i
    if keep and start is not None:
      runs.append((start, i - start))
      start = None
  return runs


def test_training_zeroes_whole_time_and_mel_stripes_of_bounded_width():
  augment = SpecAugment(time_width=5, time_stripes=2, freq_width=3, freq_stripes=2, rngs=nnx.Rngs(0))
  x = jnp.ones((16, 40, 12))
  y = np.asarray(augment(x))
  for example in y:
    zero_frames = np.all(example == 0, axis=1)  # a dropped frame is zero at every bin
    zero_bins = np.all(example == 0, axis=0)
    # 2 stripes of width <= 4 frames and 2 of width <= 2 bins (stripes may overlap or touch)
    assert len(stripes(~zero_frames)) <= 2 and zero_frames.sum() <= 2 * 4
    assert len(stripes(~zero_bins)) <= 2 and zero_bins.sum() <= 2 * 2
    kept = example[~zero_frames][:, ~zero_bins]
    np.testing.assert_array_equal(kept, 1.0)  # everything outside the stripes is untouched
  assert np.mean(y == 0) > 0.05  # some stripes were drawn
  assert not np.array_equal(y[0], y[1])  # per example


def test_eval_mode_and_each_step_draw():
  augment = SpecAugment(time_width=5, freq_width=3, rngs=nnx.Rngs(0))
  x = jnp.ones((4, 40, 12))
  assert not np.array_equal(augment(x), augment(x))  # a new draw per call
  augment.eval()
  np.testing.assert_array_equal(augment(x), x)


@pytest.mark.parametrize("kwargs, match", [(dict(time_width=0), "time_width"), (dict(freq_stripes=-1), "freq_stripes")])
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SpecAugment(rngs=nnx.Rngs(0), **kwargs)


def test_a_stripe_wider_than_the_axis_is_an_error():
  with pytest.raises(ValueError, match="exceeds"):
    SpecAugment(time_width=50, rngs=nnx.Rngs(0))(jnp.ones((2, 10, 30)))
