"""tfds adapters, on datasets prepared here by tfds's own omniglot/cifar100.

The datasets are built by subclasses of the real tfds builders that only
replace the download step (`_split_generators`) with local folders: the
feature schema, label encoding and example generation are tfds's own.
Omniglot gets real drawings (background characters from the official small1
zip, evaluation characters written out from the npz); CIFAR-100 gets synthetic
images in the official binary format, under the real label names.
"""

import csv
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import metajax
from metajax import algorithms
from metajax.data.vision import episodes
from metajax.data.vision import host_episodes
from metajax.data.vision import omniglot
from metajax.data.vision import tfds_source
from metajax.models import Conv4

# Two official sets, a few characters each; alphabet names with "_" and "()"
# check that names survive the tfds ClassLabel round trip.
BACKGROUND = ("Greek/character01", "Greek/character24", "Latin/character05")
EVALUATION = ("Angelic/character01",
              "Old_Church_Slavonic_(Cyrillic)/character14")

# The coarse label of each fine label, as in the CIFAR-100 files.
CIFAR100_COARSE_OF_FINE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11,
    5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8,
    8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2,
    12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2,
    4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)


@pytest.fixture(scope="module")
def tfds():
  """tensorflow_datasets; skipped where not installed, but required in CI."""
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    message = f"tensorflow-datasets not installed: {tfds_source.INSTALL_HINT}"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return tensorflow_datasets


# --- Split tables -----------------------------------------------------------


def test_cifar100_label_tables():
  names = tfds_source.CIFAR100_CLASSES
  assert len(names) == len(set(names)) == 100
  assert list(names) == sorted(names)
  supers = list(tfds_source.CIFAR100_SUPERCLASSES)
  assert len(supers) == 20
  assert all(len(v) == 5 for v in tfds_source.CIFAR100_SUPERCLASSES.values())
  coarse = {n: supers.index(s)
            for s, fine in tfds_source.CIFAR100_SUPERCLASSES.items()
            for n in fine}
  assert tuple(coarse[n] for n in names) == CIFAR100_COARSE_OF_FINE


@pytest.mark.parametrize("split,sizes", [("cifar_fs", (64, 16, 20)),
                                         ("fc100", (60, 20, 20))])
def test_cifar_split_tables(split, sizes):
  table = tfds_source.CIFAR_SPLITS[split]
  assert tuple(table) == ("train", "val", "test")
  assert tuple(len(table[p]) for p in table) == sizes
  every = [n for names in table.values() for n in names]
  assert len(every) == len(set(every)) == 100  # disjoint, all classes
  assert set(every) == set(tfds_source.CIFAR100_CLASSES)
  for names in table.values():
    assert len(set(names)) == len(names) and list(names) == sorted(names)


def test_fc100_is_split_by_superclass():
  supers = list(tfds_source.CIFAR100_SUPERCLASSES)
  index = {p: [supers.index(s) for s in v]
           for p, v in tfds_source.FC100_SUPERCLASSES.items()}
  assert index == {"train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19],
                   "val": [8, 11, 13, 16], "test": [0, 7, 12, 14]}
  for part, names in tfds_source.FC100_CLASSES.items():
    assert {CIFAR100_COARSE_OF_FINE[tfds_source.CIFAR100_CLASSES.index(n)]
            for n in names} == set(index[part])


# --- Imports and errors -----------------------------------------------------


def test_importing_metajax_does_not_import_tensorflow():
  code = ("import sys, metajax, metajax.data.vision.tfds_source; "
          "print([m for m in ('tensorflow', 'tensorflow_datasets') "
          "if m in sys.modules])")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


@pytest.mark.parametrize("load", [tfds_source.load_omniglot_tfds,
                                  tfds_source.load_cifar_fs_tfds])
def test_missing_tfds_says_how_to_install(load, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'metajax\[tfds\]'"):
    load()


@pytest.mark.parametrize("name,load", [
    ("omniglot", tfds_source.load_omniglot_tfds),
    ("cifar100", tfds_source.load_fc100_tfds)])
def test_unprepared_dataset_says_how_to_prepare(tfds, tmp_path, name, load):
  del tfds
  with pytest.raises(FileNotFoundError) as e:
    load(data_dir=str(tmp_path))
  message = str(e.value)
  assert f"{name!r} is not prepared in {tmp_path}" in message
  assert (f"tfds.builder('{name}', data_dir='{tmp_path}')"
          f".download_and_prepare(file_format='array_record')") in message


def test_omniglot_rejects_unknown_sets():
  with pytest.raises(ValueError, match="sets must be"):
    tfds_source.load_omniglot_tfds(sets=("images_background",))


# --- Omniglot ---------------------------------------------------------------


@pytest.fixture(scope="module")
def npz(shared_data_dir):
  """{set: OmniglotRaw} of the npz source."""
  out = {}
  for which in omniglot.SETS:
    path = os.path.join(shared_data_dir, "omniglot", omniglot.NPZ_FILES[which])
    out[which] = omniglot.read_npz(path, which)
  return out


def _write_omniglot_folders(root, data_dir, evaluation):
  """The official zip layout, <set>/images_<set>/<Alphabet>/<char>/<id>_NN.png.

  Background drawings are copied from the official small1 zip; evaluation
  drawings are written from the npz under their official character ids.
  Returns all 1,623 (alphabet, character, official id) rows of the index.
  """
  index = []
  for which in omniglot.SETS:
    path = os.path.join(data_dir, f"omniglot_{which}_105_index.csv")
    with open(path) as f:
      index += [(r["alphabet"], r["character"], int(r["official_char_id"]))
                for r in csv.DictReader(f)]
  with zipfile.ZipFile(
      os.path.join(data_dir, "images_background_small1.zip")) as z:
    for member in z.namelist():
      parts = member.split("/")
      if member.endswith(".png") and "/".join(parts[1:3]) in BACKGROUND:
        out = os.path.join(root, "background", "images_background",
                           *parts[1:])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
          f.write(z.read(member))
  ids = {f"{a}/{c}": i for a, c, i in index}
  for name in EVALUATION:
    folder = os.path.join(root, "evaluation", "images_evaluation", name)
    os.makedirs(folder)
    for k, drawing in enumerate(
        evaluation.images[evaluation.names.index(name)]):
      # The official PNGs are 1-bit, paper white.
      Image.fromarray(drawing == 255).save(
          os.path.join(folder, f"{ids[name]:04d}_{k + 1:02d}.png"))
  return index


def _prepare_omniglot(tfds, root, data_dir, evaluation, file_format):
  index = _write_omniglot_folders(os.path.join(root, "raw"), data_dir,
                                  evaluation)
  # What the real builder's `_get_names` derives from the full download.
  alphabets = sorted({a for a, _, _ in index})
  labels = [f"{a}_{int(c[len('character'):]) - 1}"
            for a, c, _ in sorted(index, key=lambda row: row[2])]
  assert len(alphabets) == 50 and len(labels) == 1623

  class LocalOmniglot(tfds.builder_cls("omniglot"), skip_registration=True):
    name = "omniglot"

    def _split_generators(self, dl_manager):
      del dl_manager
      self.info.features["alphabet"].names = alphabets
      self.info.features["label"].names = labels
      return [
          tfds.core.SplitGenerator(
              name=tfds_source.OMNIGLOT_TFDS_SPLITS[which],
              gen_kwargs={"directory": os.path.join(root, "raw", which)})
          for which in omniglot.SETS]

  out = os.path.join(root, "tfds")
  builder = LocalOmniglot(data_dir=out, file_format=file_format)
  builder.download_and_prepare()
  # The loader reads TFRecord through another path: make sure it gets one.
  assert any(f".{file_format}-" in f for f in os.listdir(builder.data_dir))
  return out


@pytest.fixture(scope="module", params=["array_record", "tfrecord"])
def omniglot_tfds_dir(request, tfds, tmp_path_factory, shared_data_dir, npz):
  root = tmp_path_factory.mktemp(f"omniglot_{request.param}")
  return _prepare_omniglot(tfds, str(root),
                           os.path.join(shared_data_dir, "omniglot"),
                           npz["evaluation"], request.param)


def _drawing_set(images):
  # Sources disagree on the order of a character's drawings, not on the set.
  return sorted(d.tobytes() for d in images)


def test_omniglot_tfds_matches_npz(omniglot_tfds_dir, npz):
  raw = tfds_source.load_omniglot_tfds(data_dir=omniglot_tfds_dir)
  assert raw.names == BACKGROUND + EVALUATION
  assert raw.sets == ("background",) * 3 + ("evaluation",) * 2
  assert raw.images.shape == (5, 20, 105, 105)
  assert raw.images.dtype == np.uint8
  assert set(np.unique(raw.images)) == {0, 255}
  for i, name in enumerate(raw.names):
    ref = npz[raw.sets[i]]
    assert _drawing_set(raw.images[i]) == _drawing_set(
        ref.images[ref.names.index(name)]), name


def test_omniglot_one_set(omniglot_tfds_dir):
  both = tfds_source.load_omniglot_tfds(data_dir=omniglot_tfds_dir)
  for sets in [("evaluation",), ("evaluation", "evaluation")]:
    raw = tfds_source.load_omniglot_tfds(data_dir=omniglot_tfds_dir,
                                         sets=sets)
    assert raw.names == EVALUATION and set(raw.sets) == {"evaluation"}
    np.testing.assert_array_equal(raw.images, both.images[3:])


@pytest.mark.slow
def test_tfds_drawings_train_through_a_tf_data_pipeline(omniglot_tfds_dir):
  """tfds to the device end to end: drawings read by tfds, episodes built
  by tf.data (`host_episodes.tf_episodes`), fed to `metajax.train`."""
  raw = tfds_source.load_omniglot_tfds(data_dir=omniglot_tfds_dir)
  dataset = episodes.make_dataset(omniglot.preprocess(raw), raw.names)
  tasks = host_episodes.tf_episodes(dataset, ways=3, shots=1, query=2,
                                    batch_size=2, seed=0)
  net = Conv4(num_outputs=None, width=4)
  embed = lambda params, x: net.apply(params, x.astype(jnp.float32) / 255)
  learner = algorithms.protonet(
      lambda k: net.init(k, jnp.zeros((1, 28, 28, 1))), embed, ways=3)
  state = metajax.train(learner, optax.adam(1e-3), tasks,
                        key=jax.random.PRNGKey(0), num_steps=4, log_every=2,
                        progress=False)
  assert int(state.step) == 4
  accuracy = metajax.evaluate(learner, state.meta_params, tasks,
                              algorithms.accuracy, num_tasks=4)
  assert accuracy.shape == (4,) and np.all((0 <= accuracy) & (accuracy <= 1))


# --- CIFAR-100 --------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_tfds_dir(tfds, tmp_path_factory):
  """A tiny cifar100 with the real labels; returns (data_dir, expected).

  Class c has 1 + c % 2 train images and 1 test image. Pixel (0, 0) of each
  image holds (class, split, rank within the class); `expected[c]` lists the
  images of class c, train then test, in file order.
  """
  root = str(tmp_path_factory.mktemp("cifar100"))
  rng = np.random.default_rng(0)
  expected = [[] for _ in range(100)]
  files = {}
  for s, split in enumerate(("train", "test")):
    labels = [c for c in range(100) for _ in range(1 + c % 2 if s == 0 else 1)]
    records = []
    for c in rng.permutation(labels):
      image = rng.integers(0, 256, (32, 32, 3), np.uint8)
      image[0, 0] = (c, s, sum(1 for e in expected[c] if e[0, 0, 1] == s))
      expected[c].append(image)
      # Binary format: coarse label, fine label, then the R, G, B planes.
      records.append(bytes([CIFAR100_COARSE_OF_FINE[c], c]) +
                     image.transpose(2, 0, 1).tobytes())
    files[split] = os.path.join(root, f"{split}.bin")
    with open(files[split], "wb") as f:
      f.write(b"".join(records))

  class LocalCifar100(tfds.builder_cls("cifar100"), skip_registration=True):
    name = "cifar100"

    def _split_generators(self, dl_manager):
      del dl_manager
      self.info.features["label"].names = list(tfds_source.CIFAR100_CLASSES)
      self.info.features["coarse_label"].names = list(
          tfds_source.CIFAR100_SUPERCLASSES)
      return {split: self._generate_examples(f"{split}_", [files[split]])
              for split in ("train", "test")}

  data_dir = os.path.join(root, "tfds")
  LocalCifar100(data_dir=data_dir,
                file_format="array_record").download_and_prepare()
  return data_dir, expected


def test_cifar100_tfds_by_class(cifar_tfds_dir):
  data_dir, expected = cifar_tfds_dir
  dataset = tfds_source.load_cifar100_tfds(data_dir=data_dir)
  assert dataset.class_names == tfds_source.CIFAR100_CLASSES
  assert dataset.images.shape == (100, 3, 32, 32, 3)
  np.testing.assert_array_equal(dataset.counts,
                                [3 if c % 2 else 2 for c in range(100)])
  for c in range(100):
    np.testing.assert_array_equal(dataset.images[c, :dataset.counts[c]],
                                  np.stack(expected[c]))


@pytest.mark.parametrize("split,load", [
    ("cifar_fs", tfds_source.load_cifar_fs_tfds),
    ("fc100", tfds_source.load_fc100_tfds)])
def test_cifar_splits_from_tfds(cifar_tfds_dir, split, load):
  data_dir, expected = cifar_tfds_dir
  splits = load(data_dir=data_dir)
  table = tfds_source.CIFAR_SPLITS[split]
  assert tuple(splits) == ("train", "val", "test")
  for part, dataset in splits.items():
    assert dataset.class_names == table[part]
    for k, name in enumerate(dataset.class_names):
      c = tfds_source.CIFAR100_CLASSES.index(name)
      assert dataset.counts[k] == len(expected[c])
      np.testing.assert_array_equal(dataset.images[k, :len(expected[c])],
                                    np.stack(expected[c]))


def test_make_cifar_splits_checks_its_input():
  dataset = episodes.make_dataset(np.zeros((2, 1, 2, 2, 3), np.uint8),
                                  ["apple", "bee"])
  with pytest.raises(ValueError, match="split must be one of"):
    tfds_source.make_cifar_splits(dataset, "mini_imagenet")
  with pytest.raises(ValueError, match="not in the dataset"):
    tfds_source.make_cifar_splits(dataset, "cifar_fs")
