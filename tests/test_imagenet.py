"""train.data.imagenet and train.data.augment: the ILSVRC2012 builder on a tiny archive set written in the official
formats, the recipe's transforms at 32 px, mixup / cutmix, random erasing; train.tasks with soft targets, top-5."""
import io
import os
import tarfile

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.io
from ml_collections import ConfigDict
from PIL import Image

from configs import convnext_dcls_imagenet
from train import data, metrics, tasks, trainer
from train.data import augment, imagenet
from train.data.pipeline import ExampleRandom, Pipeline

# Devkit synsets (ILSVRC2012_ID, WNID, num_children): the IDs are not in WNID order, and a non-leaf is no class.
SYNSETS = [(1, "n02000002", 0), (2, "n01000001", 0), (3, "n03000003", 0), (4, "n00000000", 2)]
CLASSES = ["n01000001", "n02000002", "n03000003"]  # sorted leaf WNIDs: labels 0, 1, 2
TRAIN_PER_CLASS = 3
VAL_IDS = [3, 1, 2, 1, 3]  # the ILSVRC2012_ID of ILSVRC2012_val_00000001.JPEG .. _00000005.JPEG
WIDTH, HEIGHT = 40, 30
SIZE = 32  # the transforms' image_size in these tests


def jpeg(seed: int) -> bytes:
  """A 40x30 RGB JPEG of smooth random colours (structure for the crops to move)."""
  coarse = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG")
  return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode=mode) as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


def devkit_bytes(synsets=SYNSETS, val_ids=VAL_IDS) -> bytes:
  records = np.array([(synset_id, wnid, f"words {wnid}", children) for synset_id, wnid, children in synsets],
                     dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
  meta = io.BytesIO()
  scipy.io.savemat(meta, {"synsets": records.reshape(-1, 1)})
  ground_truth = "".join(f"{synset_id}\n" for synset_id in val_ids).encode()
  return tar_bytes({f"ILSVRC2012_devkit_t12/{imagenet.DEVKIT_META}": meta.getvalue(),
                    f"ILSVRC2012_devkit_t12/{imagenet.DEVKIT_VAL_LABELS}": ground_truth}, mode="w:gz")


def write_archives(manual_dir) -> dict[str, bytes]:
  """The three official files in ``manual_dir``; returns every image's bytes by file name."""
  images, class_tars = {}, {}
  for label, wnid in enumerate(CLASSES):
    files = {f"{wnid}_{n}.JPEG": jpeg(10 * label + n) for n in range(TRAIN_PER_CLASS)}
    class_tars[f"{wnid}.tar"] = tar_bytes(files)
    images.update(files)
  val_files = {f"ILSVRC2012_val_{n:08d}.JPEG": jpeg(100 + n) for n in range(1, len(VAL_IDS) + 1)}
  images.update(val_files)
  (manual_dir / imagenet.TRAIN_TAR).write_bytes(tar_bytes(class_tars))
  (manual_dir / imagenet.VAL_TAR).write_bytes(tar_bytes(val_files))
  (manual_dir / imagenet.DEVKIT).write_bytes(devkit_bytes())
  return images


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
  manual_dir = tmp_path_factory.mktemp("manual")
  images = write_archives(manual_dir)
  config = ConfigDict({"name": "imagenet2012", "data_dir": str(tmp_path_factory.mktemp("tfds")),
                       "manual_dir": str(manual_dir), "image_size": SIZE})
  return config, images


def encoded_batch(images: dict[str, bytes], names: list[str]) -> dict:
  return {"image": np.array([images[name] for name in names], dtype=object), "label": np.arange(len(names)) % 3}


def transform_config(**fields) -> ConfigDict:
  return ConfigDict({"name": "imagenet2012", "image_size": SIZE, **fields})


# ---- the builder -------------------------------------------------------------------------------------------------

def test_train_labels_are_the_sorted_wnid_order_and_images_the_stored_files(archives):
  config, images = archives
  examples = list(data.get_source(config, "train"))
  assert len(examples) == len(CLASSES) * TRAIN_PER_CLASS
  for example in examples:
    file_name = example["file_name"].decode()
    assert example["label"] == CLASSES.index(file_name.split("_")[0])
    assert example["image"] == images[file_name]


def test_validation_labels_come_from_the_devkit_ids(archives):
  config, _ = archives
  source = data.get_source(config, "validation")
  labels = {example["file_name"].decode(): int(example["label"]) for example in source}
  wnid_of_id = {synset_id: wnid for synset_id, wnid, _ in SYNSETS}
  assert labels == {f"ILSVRC2012_val_{n:08d}.JPEG": CLASSES.index(wnid_of_id[synset_id])
                    for n, synset_id in enumerate(VAL_IDS, start=1)}
  assert source.dataset_info.features["label"].num_classes == 1000


@pytest.mark.parametrize("missing", [imagenet.TRAIN_TAR, imagenet.VAL_TAR, imagenet.DEVKIT])
def test_a_missing_archive_is_named(tmp_path, missing):
  write_archives(tmp_path)
  (tmp_path / missing).unlink()
  config = ConfigDict({"name": "imagenet2012", "data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match=missing):
    data.get_source(config, "train")


def test_malformed_archives_are_named(tmp_path):
  broken = tmp_path / imagenet.DEVKIT
  broken.write_bytes(b"not a tar")
  with pytest.raises(ValueError, match=f"{imagenet.DEVKIT}: not a readable tar"):
    imagenet.read_devkit(broken)
  no_ground_truth = tmp_path / "devkit.tar.gz"
  no_ground_truth.write_bytes(tar_bytes({imagenet.DEVKIT_META: b""}, mode="w:gz"))
  with pytest.raises(ValueError, match="no member data/ILSVRC2012_validation_ground_truth.txt"):
    imagenet.read_devkit(no_ground_truth)
  not_mat = tmp_path / "not_mat.tar.gz"
  not_mat.write_bytes(tar_bytes({imagenet.DEVKIT_META: b"garbage", imagenet.DEVKIT_VAL_LABELS: b"1\n"}, mode="w:gz"))
  with pytest.raises(ValueError, match="is not the devkit's synsets table"):
    imagenet.read_devkit(not_mat)
  unknown_id = tmp_path / "unknown_id.tar.gz"
  unknown_id.write_bytes(devkit_bytes(val_ids=[1, 4]))  # 4 is not a leaf
  with pytest.raises(ValueError, match="one leaf ILSVRC2012_ID a line"):
    imagenet.read_devkit(unknown_id)
  truncated = tmp_path / imagenet.VAL_TAR
  truncated.write_bytes(tar_bytes({"ILSVRC2012_val_00000001.JPEG": jpeg(0)})[:700])
  with pytest.raises(ValueError, match=f"{imagenet.VAL_TAR}: not a readable tar"):
    list(imagenet.validation_examples(truncated, CLASSES, ["n01000001"]))
  stray = tmp_path / imagenet.TRAIN_TAR
  stray.write_bytes(tar_bytes({"n09999999.tar": tar_bytes({"x.JPEG": jpeg(0)})}))
  with pytest.raises(ValueError, match="'n09999999.tar' is not <wnid>.tar of a devkit class"):
    list(imagenet.train_examples(stray, CLASSES))


# ---- transforms --------------------------------------------------------------------------------------------------

def test_train_transform_gives_normalised_float_images_and_int_labels(archives):
  _, images = archives
  batch = encoded_batch(images, sorted(images)[:6])
  transform = data.get_transform(transform_config(random_erasing=0.0), train=True)
  out = transform(batch, ExampleRandom(0, 0, np.arange(6)))
  assert out["image"].shape == (6, SIZE, SIZE, 3) and out["image"].dtype == np.float32
  assert out["label"].dtype == np.int32 and out["label"].tolist() == batch["label"].tolist()
  lowest, highest = (0 - imagenet.MEAN) / imagenet.STD, (1 - imagenet.MEAN) / imagenet.STD
  assert np.all(out["image"] >= lowest - 1e-6) and np.all(out["image"] <= highest + 1e-6)


def test_train_augmentation_is_a_function_of_seed_epoch_and_record(archives):
  config, _ = archives
  source = data.get_source(config, "train")
  config = transform_config(mixup=ConfigDict({"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0,
                                              "switch_prob": 0.5, "label_smoothing": 0.1}))

  def first_batch(seed, epoch):
    loader = Pipeline(source, batch_size=4, seed=seed, shuffle=True, drop_remainder=True, prefetch=0,
                      transform=data.get_transform(config, train=True))
    return next(loader.epoch(epoch))

  batch = first_batch(seed=3, epoch=1)
  assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["label"].shape == (4, 1000)
  again = first_batch(seed=3, epoch=1)
  for key in ("image", "label"):
    np.testing.assert_array_equal(batch[key], again[key])
  assert not np.array_equal(batch["image"], first_batch(seed=3, epoch=2)["image"])


def test_eval_transform_resizes_the_shorter_side_and_crops_the_centre(archives):
  _, images = archives
  name = "ILSVRC2012_val_00000001.JPEG"
  out = data.get_transform(transform_config(crop_pct=0.875), train=False)(
      encoded_batch(images, [name]), ExampleRandom(0, 0, np.arange(1)))
  # 40x30 -> shorter side int(32 / 0.875) = 36: 48x36; the centre 32x32 starts at (8, 2)
  original = Image.open(io.BytesIO(images[name])).convert("RGB")
  expected = np.asarray(original.resize((48, 36), Image.Resampling.BICUBIC).crop((8, 2, 40, 34)))
  np.testing.assert_allclose(out["image"][0], imagenet.normalize(expected[None])[0], rtol=0, atol=1e-6)


def test_bad_transform_fields_are_named():
  with pytest.raises(ValueError, match="config.dataset.image_size"):
    imagenet.make_transform(transform_config(image_size=0), train=False)
  with pytest.raises(ValueError, match="config.dataset.random_erasing"):
    imagenet.make_transform(transform_config(random_erasing=1.5), train=True)
  with pytest.raises(ValueError, match="config.dataset.mixup.label_smoothing"):
    imagenet.make_transform(transform_config(mixup=ConfigDict({
        "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 2.0})),
                            train=True)


def test_random_resized_crop_falls_back_to_the_whole_image_of_a_valid_aspect():
  image = Image.open(io.BytesIO(jpeg(0))).convert("RGB")  # 4:3, the largest aspect allowed
  cropped = augment.random_resized_crop(image, np.random.default_rng(0), SIZE, scale=(2.0, 2.0))
  np.testing.assert_array_equal(np.asarray(cropped),
                                np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)))


@pytest.mark.parametrize("name", sorted(augment.RAND_AUGMENT_OPS))
def test_every_rand_augment_op_keeps_size_and_mode(name):
  image = Image.open(io.BytesIO(jpeg(1))).convert("RGB")
  out = augment.RAND_AUGMENT_OPS[name](image, 0.9, np.random.default_rng(0), imagenet.FILL)
  assert out.size == image.size and out.mode == "RGB"


def test_rand_augment_at_zero_probability_is_the_identity():
  image = Image.open(io.BytesIO(jpeg(2))).convert("RGB")
  out = augment.rand_augment(image, np.random.default_rng(0), num_ops=2, magnitude=9, magnitude_std=0.5,
                             fill=imagenet.FILL, op_probability=0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(image))


def test_random_erasing_replaces_one_rectangle_in_a_quarter_of_the_examples():
  images = np.zeros((400, 16, 16, 3), np.float32)
  generators = augment.example_generators(ExampleRandom(0, 0, np.arange(400)), 0)
  erased = augment.random_erasing(images, generators, probability=0.25)
  touched = np.any(erased != 0, axis=-1)  # (B, H, W)
  hit = touched.any(axis=(1, 2))
  assert 0.19 < hit.mean() < 0.31
  for mask in touched[hit]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a full rectangle, nothing outside it
    assert 0.02 * 256 / 2 <= mask.sum() <= 256 / 3 * 1.5
  assert not images.any()  # the input is left alone


# ---- mixup / cutmix ----------------------------------------------------------------------------------------------

def mixed(mixup_alpha, cutmix_alpha, label_smoothing=0.0, records=np.arange(6)):
  mix = augment.make_mixup(ConfigDict({"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "prob": 1.0,
                                       "switch_prob": 0.5, "label_smoothing": label_smoothing}),
                           num_classes=10, draw=0)
  batch = {"image": np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32),
           "label": np.array([0, 1, 2, 3, 4, 5], np.int32)}
  return batch, mix(batch, ExampleRandom(0, 0, records))


def test_mixup_blends_each_image_with_the_reversed_batch_by_its_target_weight():
  batch, out = mixed(mixup_alpha=0.8, cutmix_alpha=0.0)
  lam = out["label"][0, 0]
  assert 0 < lam < 1 and out["label"].dtype == np.float32
  np.testing.assert_allclose(out["image"], lam * batch["image"] + (1 - lam) * batch["image"][::-1], atol=1e-6)
  expected = lam * np.eye(10)[batch["label"]] + (1 - lam) * np.eye(10)[batch["label"][::-1]]
  np.testing.assert_allclose(out["label"], expected, atol=1e-6)


def test_cutmix_pastes_the_partner_on_the_fraction_its_target_weight_gives():
  batch, out = mixed(mixup_alpha=0.0, cutmix_alpha=1.0)
  from_partner = np.all(out["image"] == batch["image"][::-1], axis=-1) & np.any(
      out["image"] != batch["image"], axis=-1)
  assert np.all((out["image"] == batch["image"]) | (out["image"] == batch["image"][::-1]))
  lam = out["label"][0, 0]
  np.testing.assert_allclose(from_partner.mean(axis=(1, 2)), 1 - lam, atol=1e-6)


@pytest.mark.parametrize("records", [np.arange(6), np.arange(6) + 100, np.arange(6) + 7])
def test_smoothed_mixed_targets_sum_to_one_and_mix_exactly_two_labels(records):
  batch, out = mixed(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, records=records)
  targets = out["label"]
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  above_smoothing = targets > 0.1 / 10 + 1e-6
  for i, row in enumerate(above_smoothing):
    assert set(np.flatnonzero(row)) <= {batch["label"][i], batch["label"][::-1][i]}
    assert row.sum() in (1, 2)


# ---- the classification task with soft targets ------------------------------------------------------------------

def test_soft_targets_are_used_as_given_and_integer_labels_smoothed():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
  labels = jnp.array([0, 2])
  task = tasks.classification(label_smoothing=0.1)
  soft = jnp.eye(3)[labels]
  smoothed = optax.smooth_labels(soft, 0.1)
  loss_int, metrics_int = task.loss(logits, {"label": labels})
  loss_soft, metrics_soft = task.loss(logits, {"label": soft})
  np.testing.assert_allclose(loss_int, optax.softmax_cross_entropy(logits, smoothed).mean(), rtol=1e-6)
  np.testing.assert_allclose(loss_soft, optax.softmax_cross_entropy(logits, soft).mean(), rtol=1e-6)
  assert float(metrics_int["accuracy"]) == float(metrics_soft["accuracy"]) == 0.5


def test_eval_sums_count_top1_and_top5_over_masked_examples():
  logits = jnp.tile(jnp.arange(7.0), (4, 1))  # class 6 first, class 2 fifth, class 1 sixth
  batch = {"label": jnp.array([6, 2, 1, 2]), "mask": jnp.array([1, 1, 1, 0])}
  sums = tasks.classification().eval_sums(logits, batch)
  assert (float(sums["accuracy"]), float(sums["top5_accuracy"]), float(sums["count"])) == (1.0, 2.0, 3.0)
  soft_sums = tasks.classification().eval_sums(logits, {**batch, "label": jnp.eye(7)[batch["label"]]})
  for name in sums:
    np.testing.assert_allclose(soft_sums[name], sums[name], rtol=1e-6)


# ---- the recipe, end to end --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_convnext_dcls_recipe_trains_on_the_tiny_archive(archives, tmp_path):
  """configs/convnext_dcls_imagenet.py:T-v0 at toy size through the whole loop: RandAugment, erasing, mixup /
  cutmix soft targets, the repulsive loss (from epoch 0 here), position clamp, EMA evaluation with top-5."""
  data_config, _ = archives
  config = convnext_dcls_imagenet.get_config("T-v0")
  config.model = dict(name="convnext", num_classes=1000, depths=(1, 1), dims=(8, 16), patch_size=4,
                      dwconv=dict(kind="dcls", kernel_size=5, kernel_count=3, version="v0"), drop_path_rate=0.1)
  config.dataset.update(data_dir=data_config.data_dir, manual_dir=data_config.manual_dir, image_size=SIZE,
                        worker_count=0, cache=False)
  config.update(num_epochs=2, batch_size=4, log_every_steps=1)
  config.optimizer.update(learning_rate=1e-3, repulsive_after_epoch=-1, ema_decay=0.9)
  config.schedule.warmup_epochs = 1
  config.checkpoint.every_steps = 0
  summary = trainer.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 2 * (TRAIN_PER_CLASS * len(CLASSES) // 4)
  assert 0.0 <= summary["eval/accuracy"] <= summary["eval/top5_accuracy"] <= 1.0
  records = metrics.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
