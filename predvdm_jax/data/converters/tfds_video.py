"""Any TensorFlow Datasets video dataset: ``--dataset=tfds:NAME --tfds_key=FIELD``.

``FIELD`` (``a/b`` for nested features) must be a uint8 video ``(T, H, W, C)``
with C = 1 (stored as grayscale ``(H, W)`` frames) or 3. ``--src`` is the TFDS
``data_dir`` (empty: TFDS's default); ``tfds_download=True`` prepares the
dataset first. Examples are read in TFDS's deterministic order
(``shuffle_files=False``). Needs the ``tfds`` extra (tensorflow-datasets and
tensorflow-cpu). Examples: ``moving_mnist`` / ``image_sequence``,
``bair_robot_pushing_small`` / ``image_aux1``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from predvdm_jax.data.converters import common


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "TFDS datasets need the tfds extra: pip install -e '.[tfds]' in the project's folder "
            "(tensorflow-datasets and tensorflow-cpu)."
        ) from e
    return tfds


def _field(example: dict, key: str, name: str):
    value = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise common.SourceError(
                f"TFDS {name}: no feature {key!r} (at {part!r}; found {have}); "
                f"set --tfds_key to the video field."
            )
        value = value[part]
    return value


def as_video(value, key: str, name: str) -> np.ndarray:
    video = np.asarray(value)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] not in (1, 3):
        raise common.SourceError(
            f"TFDS {name}: feature {key!r} is {video.dtype} "
            f"{tuple(video.shape)}; expected a uint8 video (T, H, W, 1 or 3)."
        )
    return video[..., 0] if video.shape[-1] == 1 else video


def plan(
    src: str,
    name: str,
    tfds_key: str | None = None,
    tfds_splits: Sequence[str] | None = None,
    tfds_download: bool = False,
) -> common.ConversionPlan:
    if not name:
        raise ValueError("Give the TFDS dataset as --dataset=tfds:NAME (e.g. tfds:moving_mnist).")
    if not tfds_key:
        raise ValueError(f"TFDS {name}: set --tfds_key to the video feature (e.g. image_sequence).")
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=src or None)
    except Exception as e:
        raise common.SourceError(
            f"TFDS has no dataset {name!r} ({type(e).__name__}: {e}); check "
            f"the name with tfds.list_builders()."
        ) from e
    if tfds_download:
        builder.download_and_prepare()
    known = {split: info.num_examples for split, info in builder.info.splits.items()}
    split_names = list(tfds_splits) if tfds_splits else sorted(known)
    if not split_names:
        raise common.SourceError(
            f"TFDS {name} is not prepared in {src or 'the default data_dir'}; "
            f"pass tfds_download=True (--tfds_download) or run "
            f"`tfds build {name}`."
        )

    def dataset(split):
        return builder.as_dataset(split=split, shuffle_files=False)

    notes, splits = [], []
    for split in split_names:
        count = known.get(split)
        if count is None:
            count = sum(1 for _ in tfds.as_numpy(dataset(split)))
            notes.append(
                f"{split}: {count} examples (counted; the split is not in the dataset info)"
            )

        def load_range(start, stop, split=split):
            for example in tfds.as_numpy(dataset(split).skip(start).take(stop - start)):
                yield as_video(_field(example, tfds_key, name), tfds_key, name)

        splits.append(common.SplitPlan(split, range(count), load_range=load_range))
    options = {"name": name, "tfds_key": tfds_key, "splits": split_names}
    return common.ConversionPlan(f"tfds:{name}", splits, options, notes)
