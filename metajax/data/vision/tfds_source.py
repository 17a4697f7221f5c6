"""Few-shot datasets read from tensorflow-datasets: Omniglot, CIFAR-FS, FC100.

An optional source (`pip install 'metajax[tfds]'`): tensorflow-datasets is
imported only when a loader runs, so `import metajax` never loads TensorFlow.
The loaders read a dataset that tfds has already prepared; they never
download. A copy prepared with `file_format="array_record"` is read by random
access, without tf.data or even importing TensorFlow; one in tfds' default
TFRecord format is read through `as_dataset`. Images are decoded here with
`metajax.data.images` (Pillow), not by tfds: tfds' NumPy decoder turns
Omniglot's 1-bit PNGs into 0/1 rather than 0/255 when OpenCV is not
installed.

* `load_omniglot_tfds`: the tfds `omniglot` train/test splits (the official
  background/evaluation sets) as an `omniglot.OmniglotRaw`, equal to the other
  Omniglot sources up to the order of the drawings inside each character.
* `load_cifar100_tfds`: all 60,000 CIFAR-100 images (the tfds train and test
  splits joined, 600 per class) as one 100-class `ClassDataset`.
* `make_cifar_splits`, `load_cifar_fs_tfds`, `load_fc100_tfds`: the
  meta-train/val/test classes of CIFAR-FS (Bertinetto et al., 2019; 64/16/20
  classes) and FC100 (Oreshkin et al., 2018; 12/4/4 superclasses, so 60/20/20
  classes).
"""

import collections
from typing import Dict, Optional, Sequence

import numpy as np

from metajax.data import images as images_lib
from metajax.data.vision import episodes
from metajax.data.vision import omniglot

INSTALL_HINT = "pip install 'metajax[tfds]'"

# The tfds omniglot builder makes "train" from images_background.zip and
# "test" from images_evaluation.zip; its small1/small2 splits repeat
# background characters.
OMNIGLOT_TFDS_SPLITS = {"background": "train", "evaluation": "test"}

_READ_BATCH = 4096

# The 20 CIFAR-100 superclasses in coarse-label order, each with its 5 fine
# classes (Krizhevsky, 2009; the names of coarse_label_names.txt and
# fine_label_names.txt in the official archive).
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear",
                             "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone",
                                     "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road",
                                      "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain",
                                     "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee",
                                       "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree",
              "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

# The 100 fine labels in label order, which is alphabetical.
CIFAR100_CLASSES = tuple(sorted(
    name for names in CIFAR100_SUPERCLASSES.values() for name in names))

# CIFAR-FS: the class lists of Bertinetto et al.'s R2D2 release
# (splits/bertinetto/{train,val,test}.txt of its CIFAR-FS archive), as
# republished in tristandeleu/pytorch-meta,
# torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json.
CIFAR_FS_CLASSES = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy",
        "bridge", "bus", "can", "castle", "caterpillar", "chair", "clock",
        "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin",
        "elephant", "forest", "girl", "hamster", "house", "kangaroo",
        "keyboard", "lawn_mower", "lion", "lizard", "lobster", "mountain",
        "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree",
        "pear", "pine_tree", "plate", "porcupine", "possum", "rabbit",
        "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper",
        "snake", "spider", "squirrel", "streetcar", "sunflower", "tank",
        "tiger", "train", "trout", "tulip", "turtle", "willow_tree", "wolf"),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab",
        "crocodile", "flatfish", "lamp", "maple_tree", "motorcycle", "otter",
        "sea", "shark", "television", "tractor"),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man",
        "pickup_truck", "plain", "poppy", "rocket", "rose", "snail",
        "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman",
        "worm"),
}

# FC100: superclasses 1-6, 9, 10, 15, 17-19 / 8, 11, 13, 16 / 0, 7, 12, 14,
# from Oreshkin et al.'s TADAM code (ServiceNow/TADAM,
# datasets/create_dataset_cifar100.py, `class_split`).
FC100_SUPERCLASSES = {
    "train": ("fish", "flowers", "food_containers", "fruit_and_vegetables",
              "household_electrical_devices", "household_furniture",
              "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
              "reptiles", "trees", "vehicles_1", "vehicles_2"),
    "val": ("large_carnivores", "large_omnivores_and_herbivores",
            "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}

FC100_CLASSES = {
    part: tuple(sorted(name for s in supers
                       for name in CIFAR100_SUPERCLASSES[s]))
    for part, supers in FC100_SUPERCLASSES.items()
}

CIFAR_SPLITS = {"cifar_fs": CIFAR_FS_CLASSES, "fc100": FC100_CLASSES}


def _import_tfds():
  """The `tensorflow_datasets` module, or an ImportError saying what to do."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"the tfds data sources need tensorflow-datasets and TensorFlow, "
        f"which are not installed; install them with: {INSTALL_HINT}") from e
  return tfds


def _prepared_builder(tfds, name: str, data_dir: Optional[str]):
  """The tfds builder of `name`, checked to be prepared under `data_dir`."""
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    where = "" if data_dir is None else f", data_dir={str(data_dir)!r}"
    raise FileNotFoundError(
        f"the tfds dataset {name!r} is not prepared in {builder.data_dir}. "
        f"Preparing it downloads the original files (internet access "
        f"needed):\n"
        f"  python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}'{where})"
        f".download_and_prepare(file_format='array_record')\"\n"
        f"or prepare it on another machine, copy its data folder here and "
        f"pass that folder as data_dir.")
  return builder


def _read_split(tfds, builder, split: str,
                keys: Sequence[str]) -> Dict[str, list]:
  """Features `keys` of every example of `split`, one list per key.

  "image" is left as the encoded PNG bytes.
  """
  decoders = {"image": tfds.decode.SkipDecoding()}
  out = {k: [] for k in keys}
  # Both readers are several times faster in batches than example by example.
  try:
    source = builder.as_data_source(split, decoders=decoders)
  except NotImplementedError:
    # Prepared as TFRecord (tfds' default), which has no random access.
    for batch in tfds.as_numpy(builder.as_dataset(
        split=split, decoders=decoders, batch_size=_READ_BATCH)):
      for k in keys:
        out[k].extend(batch[k])
    return out
  for start in range(0, len(source), _READ_BATCH):
    stop = min(start + _READ_BATCH, len(source))
    for example in source.__getitems__(list(range(start, stop))):
      for k in keys:
        out[k].append(example[k])
  return out


def load_omniglot_tfds(
    data_dir: Optional[str] = None,
    sets: Sequence[str] = omniglot.SETS) -> omniglot.OmniglotRaw:
  """Omniglot from the tfds `omniglot` dataset.

  The builder labels each drawing with `alphabet` (a ClassLabel over the 50
  alphabet folder names) and `alphabet_char_id` (the folder number NN of
  "characterNN", minus one), from which the official names are rebuilt.
  Drawings of a character come in the order of their PNG bytes: tfds keeps no
  drawer id, and this order does not depend on the file format or shards.

  Args:
    data_dir: the tfds data folder holding `omniglot/3.0.0`; None for tfds'
      default (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).
    sets: which official sets to read, "background" (tfds split "train")
      and/or "evaluation" ("test").

  Returns:
    The canonical `OmniglotRaw`: uint8 `[characters, 20, 105, 105]`, 255 =
    paper, 0 = ink.
  """
  bad = sorted(set(sets) - set(omniglot.SETS))
  if bad or not sets:
    raise ValueError(
        f"sets must be a non-empty subset of {omniglot.SETS}, got {sets!r}.")
  tfds = _import_tfds()
  builder = _prepared_builder(tfds, "omniglot", data_dir)
  alphabet_names = builder.info.features["alphabet"].names
  height, width = builder.info.features["image"].shape[:2]
  drawings = collections.defaultdict(list)
  for which in sorted(set(sets)):
    found = _read_split(tfds, builder, OMNIGLOT_TFDS_SPLITS[which],
                        ("image", "alphabet", "alphabet_char_id"))
    for png, alphabet, char_id in zip(found["image"], found["alphabet"],
                                      found["alphabet_char_id"]):
      drawings[(which, alphabet_names[int(alphabet)],
                f"character{int(char_id) + 1:02d}")].append(png)
  sizes = collections.Counter(len(v) for v in drawings.values())
  if len(sizes) != 1:
    raise ValueError(
        f"tfds omniglot in {builder.data_dir}: every character must have the "
        f"same number of drawings; got {{drawings: characters}} = "
        f"{dict(sizes)}.")
  keys = sorted(drawings)
  images = np.empty((len(keys), next(iter(sizes)), height, width), np.uint8)
  for i, key in enumerate(keys):
    for j, png in enumerate(sorted(drawings[key])):
      images[i, j] = images_lib.decode_image(
          png, mode="L", where=(f"tfds omniglot in {builder.data_dir}: "
                                f"{'/'.join(key)}, drawing {j}"))
  return omniglot.canonical(omniglot.OmniglotRaw(images, *zip(*keys)))


def load_cifar100_tfds(data_dir: Optional[str] = None) -> episodes.ClassDataset:
  """All of CIFAR-100 from the tfds `cifar100` dataset, indexed by class.

  Few-shot protocols pool the official train and test images of a class
  (500 + 100), so both tfds splits are read; each class holds its train
  images, then its test images, each in the order of the original files.

  Args:
    data_dir: the tfds data folder holding `cifar100/3.0.2`; None for tfds'
      default.

  Returns:
    A `ClassDataset` of the 100 fine classes in label order: images uint8
    `[100, 600, 32, 32, 3]`, class names the fine label names ("apple", ...).
  """
  tfds = _import_tfds()
  builder = _prepared_builder(tfds, "cifar100", data_dir)
  names = builder.info.features["label"].names
  per_class = [[] for _ in names]
  for split in ("train", "test"):
    found = _read_split(tfds, builder, split, ("id", "image", "label"))
    # tfds shuffles examples on disk; ids "train_00042" give the file order.
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in found["id"]]
    for k in sorted(range(len(ids)), key=ids.__getitem__):
      per_class[int(found["label"][k])].append(found["image"][k])
  counts = np.array([len(p) for p in per_class], np.int32)
  image_shape = tuple(builder.info.features["image"].shape)
  images = np.zeros((len(names), counts.max(initial=0)) + image_shape,
                    np.uint8)
  for c, pngs in enumerate(per_class):
    for j, png in enumerate(pngs):
      images[c, j] = images_lib.decode_image(
          png, mode="RGB", where=(f"tfds cifar100 in {builder.data_dir}: "
                                  f"class {names[c]!r}, image {j}"))
  return episodes.make_dataset(images, names, counts)


def make_cifar_splits(dataset: episodes.ClassDataset, split: str = "cifar_fs"
                      ) -> Dict[str, episodes.ClassDataset]:
  """The meta-train/val/test classes of a CIFAR-100 protocol.

  Args:
    dataset: CIFAR-100 by fine class, e.g. `load_cifar100_tfds()`.
    split: "cifar_fs" (64/16/20 classes) or "fc100" (60/20/20).

  Returns:
    {"train", "val", "test"}, each with its classes in alphabetical order.
  """
  if split not in CIFAR_SPLITS:
    raise ValueError(
        f"split must be one of {tuple(CIFAR_SPLITS)}, got {split!r}.")
  return {part: episodes.subset(dataset, names)
          for part, names in CIFAR_SPLITS[split].items()}


def load_cifar_fs_tfds(data_dir: Optional[str] = None
                       ) -> Dict[str, episodes.ClassDataset]:
  """CIFAR-FS from the tfds `cifar100` dataset; see `make_cifar_splits`."""
  return make_cifar_splits(load_cifar100_tfds(data_dir), "cifar_fs")


def load_fc100_tfds(data_dir: Optional[str] = None
                    ) -> Dict[str, episodes.ClassDataset]:
  """FC100 from the tfds `cifar100` dataset; see `make_cifar_splits`."""
  return make_cifar_splits(load_cifar100_tfds(data_dir), "fc100")
