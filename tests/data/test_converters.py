"""Converters on miniature copies of the real distributions, checked against the
originals' preprocessing recomputed here (cv2 / PIL / torch / protobuf)."""

import csv
import gzip
import os
import shutil
import re
import struct
import zipfile

import h5py
import numpy as np
import pytest

from predvdm_jax.data import converters, hdf5
from predvdm_jax.data.converters import SourceError, bair, smmnist

cv2 = pytest.importorskip("cv2")


RESUME = "Once it is fixed, run the same command again to resume (finished shards are kept)."


def _shards(split_dir):
    return hdf5.VideoShards(split_dir)


def _video(shards, index):
    return shards.read_clip(index, 0, int(shards.frame_counts[index]))


def _write_avi(path, frames_bgr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    assert writer.isOpened()
    for f in frames_bgr:
        writer.write(f)
    writer.release()


def _decode_avi(path):
    capture, frames = cv2.VideoCapture(path), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _random_frames(rng, n, h, w):
    # Smooth content so MJPG keeps it recognisable, plus noise to make frames distinct.
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        base = np.stack([(xx * 255 // w + 40 * t) % 256, yy * 255 // h, (xx + yy) % 256], -1)
        out.append(np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


# ---------------------------------------------------------------- KTH

KTH_VIDEOS = {  # (action, stem, in zip)
    ("boxing", "person01_boxing_d1", True),
    ("boxing", "person21_boxing_d1", True),
    ("handclapping", "person02_handclapping_d1", False),
    ("handclapping", "person13_handclapping_d1", False),
    ("walking", "person22_walking_d2", False),
}


@pytest.fixture(scope="module")
def kth_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("kth")
    rng = np.random.default_rng(0)
    staging = tmp_path_factory.mktemp("kth_zip_staging")
    for action in ("handclapping", "handwaving", "jogging", "running", "walking"):
        (src / action).mkdir()
    with zipfile.ZipFile(src / "boxing.zip", "w") as zf:
        for action, stem, in_zip in sorted(KTH_VIDEOS):
            frames = _random_frames(rng, 4 + len(stem) % 3, 120, 160)
            if in_zip:
                path = str(staging / f"{stem}_uncomp.avi")
                _write_avi(path, frames)
                zf.write(path, f"{stem}_uncomp.avi")
            else:
                _write_avi(str(src / action / f"{stem}_uncomp.avi"), frames)
    return src


def _kth_reference(path, crop="squash"):
    out = []
    for frame in _decode_avi(path):
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if crop == "center":
            gray = gray[:, 20:140]
        out.append(cv2.resize(gray, (64, 64)))
    return np.stack(out)


def test_kth_mcvd_split_frames_match_original_preprocessing(kth_src, tmp_path):
    summary = converters.convert("kth", str(kth_src), str(tmp_path / "out"), progress=False)
    assert [s.name for s in summary.splits] == ["train", "test"]
    assert any("person13_handclapping_d3" in n for n in summary.notes)
    train, test = _shards(str(tmp_path / "out/train")), _shards(str(tmp_path / "out/test"))
    assert (len(train), len(test)) == (3, 2)
    assert train.frame_shape == (64, 64) and train.dtype == np.uint8
    # Order: person by person, then file name (the rvd test below tells it from action order).
    expected_train = [
        "boxing/person01_boxing_d1",
        "handclapping/person02_handclapping_d1",
        "handclapping/person13_handclapping_d1",
    ]
    staging = tmp_path / "ref"
    with zipfile.ZipFile(kth_src / "boxing.zip") as zf:
        zf.extractall(staging)
    for shards, names in (
        (train, expected_train),
        (test, ["boxing/person21_boxing_d1", "walking/person22_walking_d2"]),
    ):
        for i, name in enumerate(names):
            action, stem = name.split("/")
            path = (staging if action == "boxing" else kth_src / action) / f"{stem}_uncomp.avi"
            reference = _kth_reference(str(path))
            got = _video(shards, i)[..., 0]
            assert got.shape == reference.shape
            np.testing.assert_array_equal(got, reference)
    assert summary.split("train").num_frames == int(train.frame_counts.sum())


def test_a_video_that_decodes_short_is_written_and_named_in_the_summary(kth_src, tmp_path):
    """A truncated download decodes to fewer frames than its header announces: the video is
    kept (its frames are real) but the summary names it, with both counts."""
    src = tmp_path / "kth"
    shutil.copytree(kth_src, src)
    path = src / "handclapping" / "person02_handclapping_d1_uncomp.avi"
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * 0.6))
    announced = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
    decoded = len(_decode_avi(str(path)))
    assert 0 < decoded < announced
    summary = converters.convert("kth", str(src), str(tmp_path / "out"), progress=False)
    train = _shards(str(tmp_path / "out/train"))
    assert int(train.frame_counts[1]) == decoded  # person02 is the second training video
    (note,) = [n for n in summary.notes if "fewer frames" in n]
    assert note.startswith("1 video(s) decoded to fewer frames than their headers announce")
    assert note.endswith(f"{path} ({decoded} of {announced} frames)")
    assert note in str(summary)


def test_kth_center_crop_and_rvd_split(kth_src, tmp_path):
    converters.convert(
        "kth",
        str(kth_src),
        str(tmp_path / "out"),
        progress=False,
        kth_crop="center",
        kth_split="rvd",
    )
    plan = converters.make_plan("kth", str(kth_src), kth_split="rvd")
    stems = {s.name: [item[1] for item in s.items] for s in plan.splits}
    assert stems == {  # person by person in the original's lists (valid 19..25, 01, 04)
        "train": ["person13_handclapping_d1"],
        "valid": ["person21_boxing_d1", "person01_boxing_d1"],
        "test": ["person22_walking_d2", "person02_handclapping_d1"],
    }
    got = _video(_shards(str(tmp_path / "out/test")), 0)[..., 0]
    reference = _kth_reference(str(kth_src / "walking/person22_walking_d2_uncomp.avi"), "center")
    np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("size", [0, -64])
def test_a_frame_size_below_one_is_refused_before_anything_is_written(kth_src, tmp_path, size):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"^image_size must be >= 1, got {size}; pass e\.g\."):
        converters.convert("kth", str(kth_src), str(out), progress=False, image_size=size)
    assert not out.exists()  # no conversion.json to block the corrected run


def test_kth_wrong_source_names_what_is_missing(tmp_path):
    (tmp_path / "walking").mkdir()
    with pytest.raises(SourceError, match="no 'boxing' folder or boxing.zip"):
        converters.convert("kth", str(tmp_path), str(tmp_path / "out"), progress=False)


def test_kth_finds_nested_and_upper_case_videos_and_falls_back_to_a_zip(kth_src, tmp_path):
    """What unzipping by hand leaves: videos one folder deeper and .AVI; an empty action folder
    beside its zip uses the zip. A damaged zip member and an empty split are one SourceError."""
    src = tmp_path / "src"
    shutil.copytree(kth_src, src)
    (src / "boxing").mkdir()  # empty: boxing.zip is used
    walking = src / "walking" / "person22_walking_d2_uncomp.avi"
    nested = src / "walking" / "walking" / "PERSON22_walking_d2_uncomp.AVI"
    nested.parent.mkdir()
    walking.rename(nested)
    plan = converters.make_plan("kth", str(src))
    stems = {split.name: [item[1] for item in split.items] for split in plan.splits}
    assert stems == {
        "train": ["person01_boxing_d1", "person02_handclapping_d1", "person13_handclapping_d1"],
        "test": ["person21_boxing_d1", "person22_walking_d2"],
    }
    with zipfile.ZipFile(src / "boxing.zip") as zf:  # flip bytes inside person21's data
        info = zf.getinfo("person21_boxing_d1_uncomp.avi")
    with open(src / "boxing.zip", "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename) + 100)
        f.write(b"\xff" * 16)
    with pytest.raises(SourceError) as err:
        converters.convert("kth", str(src), str(tmp_path / "out"), progress=False)
    assert str(err.value).startswith(
        f"KTH source: person21_boxing_d1_uncomp.avi in {src / 'boxing.zip'} cannot be extracted"
    )
    assert str(err.value).endswith(f"the zip is damaged, re-download it. {RESUME}")

    shutil.rmtree(src)  # a source without the test persons (21, 22)
    shutil.copytree(kth_src, src)
    os.remove(src / "walking" / "person22_walking_d2_uncomp.avi")
    with (
        zipfile.ZipFile(kth_src / "boxing.zip") as old,
        zipfile.ZipFile(src / "boxing.zip", "w") as new,
    ):
        new.writestr("person01_boxing_d1_uncomp.avi", old.read("person01_boxing_d1_uncomp.avi"))
    with pytest.raises(SourceError, match=r"^kth: no source video for split\(s\) test \(see"):
        converters.convert("kth", str(src), str(tmp_path / "empty"), progress=False)
    assert not (tmp_path / "empty").exists()


def test_kth_two_files_of_one_video_are_refused_not_picked_by_folder_order(kth_src, tmp_path):
    """Which copy a folder walk meets last depends on the file system's listing order."""
    src = tmp_path / "src"
    shutil.copytree(kth_src, src)
    first = src / "walking" / "person22_walking_d2_uncomp.avi"
    second = src / "walking" / "copy" / "person22_walking_d2_uncomp.AVI"
    second.parent.mkdir()
    shutil.copy(first, second)
    with pytest.raises(
        SourceError,
        match=rf"^KTH source: person22_walking_d2 is in two files, {re.escape(str(first))} and "
        rf"{re.escape(str(second))}; keep one of them\.$",
    ):
        converters.make_plan("kth", str(src))


def test_a_rerun_from_another_source_is_refused(kth_src, tmp_path):
    """conversion.json records the source: a resume must read the same one, or an interrupted
    conversion would end with shards of two datasets."""
    out = tmp_path / "out"
    converters.convert("kth", str(kth_src), str(out), progress=False)
    before = sorted(p.name for p in (out / "train").iterdir())
    converters.convert("kth", str(kth_src), str(out), progress=False)  # the same: resumes
    other = tmp_path / "other"
    shutil.copytree(kth_src, other)
    with pytest.raises(hdf5.DatasetError, match=r"made with other settings \(source differ\)"):
        converters.convert("kth", str(other), str(out), progress=False)
    assert sorted(p.name for p in (out / "train").iterdir()) == before


def _all_frames(out_dir):
    result = {}
    for split in sorted(os.listdir(out_dir)):
        if not os.path.isdir(os.path.join(out_dir, split)):
            continue
        files = sorted(os.listdir(os.path.join(out_dir, split)))
        shards = _shards(os.path.join(out_dir, split))
        result[split] = (files, [_video(shards, i) for i in range(len(shards))])
    return result


def test_interrupted_conversion_resumes_to_identical_files(kth_src, tmp_path):
    clean, resumed = str(tmp_path / "clean"), str(tmp_path / "resumed")
    converters.convert("kth", str(kth_src), clean, vids_per_shard=2, progress=False)

    def crash_on_third(split, index):
        if split == "train" and index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        converters.convert(
            "kth",
            str(kth_src),
            resumed,
            vids_per_shard=2,
            progress=False,
            on_video=crash_on_third,
            num_workers=2,
        )
    assert sorted(os.listdir(os.path.join(resumed, "train"))) == [
        "shard_0001.hdf5",
        hdf5.UNFINISHED,
    ]
    # A .tmp left by a killed process is redone, not trusted.
    with open(os.path.join(resumed, "train", "shard_0002.hdf5.tmp"), "wb") as f:
        f.write(b"garbage")
    summary = converters.convert("kth", str(kth_src), resumed, vids_per_shard=2, progress=False)
    assert summary.split("train").reused_shards == 1
    assert summary.split("train").converted_videos == 1
    clean_frames, resumed_frames = _all_frames(clean), _all_frames(resumed)
    assert clean_frames.keys() == resumed_frames.keys() == {"train", "test"}
    for split in clean_frames:
        assert (
            clean_frames[split][0]
            == resumed_frames[split][0]
            == ["shard_0001.hdf5", "shard_0002.hdf5"][: len(clean_frames[split][0])]
        )
        for a, b in zip(clean_frames[split][1], resumed_frames[split][1], strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(hdf5.DatasetError, match="other settings"):
        converters.convert("kth", str(kth_src), resumed, vids_per_shard=3, progress=False)


def test_an_interrupted_split_is_refused_until_the_conversion_finishes(tmp_path):
    """A stopped conversion leaves whole shards only: without a mark, the first 4 of 10 videos
    would read as a finished split of 4, and training or evaluation would use it."""
    plan = converters.ConversionPlan(
        "toy",
        [converters.SplitPlan("train", range(10), lambda i: np.full((2, 4, 4), i, np.uint8))],
        {},
    )

    def stop_at_fifth(split, index):
        if index == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        converters.run_plan(
            plan, str(tmp_path), vids_per_shard=2, progress=False, on_video=stop_at_fifth
        )
    split_dir = str(tmp_path / "train")
    assert hdf5.shard_paths(split_dir) == [hdf5.shard_path(split_dir, k) for k in (1, 2)]
    with pytest.raises(
        hdf5.DatasetError,
        match=rf"^{re.escape(split_dir)} is unfinished \(its writing stopped before the end\); "
        r"re-run the scripts/prepare_data.py command that made it to finish it\.$",
    ):
        hdf5.VideoShards(split_dir)
    converters.run_plan(plan, str(tmp_path), vids_per_shard=2, progress=False)
    shards = _shards(split_dir)
    assert [int(_video(shards, i).max()) for i in range(len(shards))] == list(range(10))


def test_a_shard_of_another_frame_shape_than_the_first_is_refused(tmp_path):
    """A source whose videos change size between shards (CARLA tensors, TFDS features are
    written unchanged) fails when converted, not when training first draws a later clip."""
    shapes = [(4, 4), (4, 4), (5, 4)]
    plan = converters.ConversionPlan(
        "toy",
        [converters.SplitPlan("train", range(3), lambda i: np.zeros((2, *shapes[i]), np.uint8))],
        {},
    )
    with pytest.raises(hdf5.DatasetError, match=r"shape \(5, 4\), but the dataset's frames are"):
        converters.run_plan(plan, str(tmp_path), vids_per_shard=2, progress=False)
    with pytest.raises(hdf5.DatasetError, match=r"shape \(5, 4\), but the dataset's frames are"):
        converters.run_plan(plan, str(tmp_path), vids_per_shard=2, progress=False)  # a resume


def test_a_sequential_source_that_ends_early_is_an_error_not_a_shorter_split(tmp_path):
    """A ``load_range`` (TFDS) source whose split holds fewer examples than its info counts."""

    def load_range(start, stop):
        for i in range(start, min(stop, 3)):
            yield np.full((2, 4, 4), i, np.uint8)

    plan = converters.ConversionPlan(
        "toy", [converters.SplitPlan("train", range(4), load_range=load_range)], {}
    )
    with pytest.raises(
        SourceError,
        match=r"^toy train: the source gave 1 of the 2 videos of items 2-3 \(it holds fewer "
        r"than it announced\); check the source \(re-prepare or re-download it\) and run again\. "
        rf"{re.escape(RESUME)}$",
    ):
        converters.run_plan(plan, str(tmp_path), vids_per_shard=2, progress=False)
    assert hdf5.shard_paths(str(tmp_path / "train")) == [
        hdf5.shard_path(str(tmp_path / "train"), 1)
    ]


def test_skipped_items_keep_the_shard_of_every_item_fixed(tmp_path):
    """Shard k holds items [(k-1)n, kn) even when some are skipped; one all skipped is absent."""
    skip = {1, 2, 3}

    def load(item):
        return None if item in skip else np.full((2, 4, 4), item, np.uint8)

    plan = converters.ConversionPlan("toy", [converters.SplitPlan("train", range(5), load)], {})
    summary = converters.run_plan(plan, str(tmp_path), vids_per_shard=2, progress=False)
    result = summary.split("train")
    assert (result.converted_videos, result.skipped_items, result.reused_shards) == (2, 3, 0)
    assert sorted(os.listdir(tmp_path / "train")) == ["shard_0001.hdf5", "shard_0003.hdf5"]
    shards = _shards(str(tmp_path / "train"))
    assert [int(_video(shards, i).max()) for i in range(len(shards))] == [0, 4]
    again = converters.run_plan(plan, str(tmp_path), vids_per_shard=2, progress=False)
    result = again.split("train")
    assert (result.converted_videos, result.skipped_items, result.reused_shards) == (0, 2, 2)


def test_an_out_folder_holding_shards_of_any_name_is_refused_before_writing(tmp_path):
    """Every ``*.hdf5`` / ``*.h5`` file the reader would take as a shard (``shard_paths``), not
    only ``shard_*.hdf5``, marks a folder as another conversion's: converting into it would mix
    its videos with the new ones in one split."""
    plan = converters.ConversionPlan(
        "toy",
        [converters.SplitPlan("train", range(2), lambda i: np.full((2, 4, 4), i, np.uint8))],
        {},
    )
    out = tmp_path / "out"
    hdf5.write_shard(str(out / "train" / "videos.h5"), [np.zeros((3, 4, 4), np.uint8)])
    with pytest.raises(
        hdf5.DatasetError,
        match=rf"already holds shards \({re.escape(str(out / 'train' / 'videos.h5'))}\) from an "
        r"unknown conversion; use a new --out folder or delete them\.",
    ):
        converters.run_plan(plan, str(out), progress=False)
    assert sorted(os.listdir(out)) == ["train"] and os.listdir(out / "train") == ["videos.h5"]


# ---------------------------------------------------------------- SMMNIST


def test_smmnist_from_mnist_npz_uses_test_pool_and_three_digits(tmp_path):
    x_train = np.full((20, 28, 28), 255, np.uint8)
    # Only the first 256 test digits may be used: make them blank, the rest bright.
    x_test = np.concatenate(
        [np.zeros((256, 28, 28), np.uint8), np.full((44, 28, 28), 255, np.uint8)]
    )
    np.savez(
        tmp_path / "mnist.npz",
        x_train=x_train,
        y_train=np.zeros(20),
        x_test=x_test,
        y_test=np.zeros(300),
    )
    summary = converters.convert(
        "smmnist",
        str(tmp_path / "mnist.npz"),
        str(tmp_path / "out"),
        progress=False,
        num_train=3,
        num_test=2,
    )
    train, test = _shards(str(tmp_path / "out/train")), _shards(str(tmp_path / "out/test"))
    assert (len(train), len(test)) == (3, 2)
    assert list(train.frame_counts) == [40, 40, 40] and train.frame_shape == (64, 64)
    assert summary.split("test").num_frames == 80
    for i in range(2):
        assert _video(test, i).max() == 0
    for i in range(3):
        video = _video(train, i)[..., 0]
        assert set(np.unique(video)) == {0, 255}
        # Three 32×32 squares: at least one square's area, at most three, every frame.
        lit = (video > 0).sum(axis=(1, 2))
        assert lit.min() >= 32 * 32 and lit.max() <= 3 * 32 * 32
    assert (_video(train, 0)[..., 0] > 0).sum(axis=(1, 2)).max() > 32 * 32


def test_mnist_npz_and_idx(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=images, x_test=images[:2])
    train, test = smmnist.load_mnist(str(tmp_path / "mnist.npz"))
    np.testing.assert_array_equal(train, images)
    for name, arr in (
        ("train-images-idx3-ubyte.gz", images),
        ("t10k-images-idx3-ubyte.gz", images[:2]),
    ):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", *arr.shape) + arr.tobytes())
    train, test = smmnist.load_mnist(str(tmp_path))
    np.testing.assert_array_equal(train, images)
    np.testing.assert_array_equal(test, images[:2])


def test_smmnist_missing_source(tmp_path):
    with pytest.raises(SourceError, match="mnist.npz"):
        converters.convert("smmnist", str(tmp_path / "nope"), str(tmp_path / "out"), progress=False)


# ---------------------------------------------------------------- BAIR


def _crc32c_table():
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ (0x82F63B78 & -(n & 1))
        table.append(n)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _example_class():
    """tf.train.Example from a hand-written descriptor (the protobuf package's encoder)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(
        name="mini_example.proto", package="mini", syntax="proto3"
    )
    label_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    label_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    T = descriptor_pb2.FieldDescriptorProto

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    message("BytesList", [("value", 1, T.TYPE_BYTES, label_rep, None)])
    message("FloatList", [("value", 1, T.TYPE_FLOAT, label_rep, None)])
    message("Int64List", [("value", 1, T.TYPE_INT64, label_rep, None)])
    feature = message(
        "Feature",
        [
            ("bytes_list", 1, T.TYPE_MESSAGE, label_opt, ".mini.BytesList"),
            ("float_list", 2, T.TYPE_MESSAGE, label_opt, ".mini.FloatList"),
            ("int64_list", 3, T.TYPE_MESSAGE, label_opt, ".mini.Int64List"),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message(
        "Features", [("feature", 1, T.TYPE_MESSAGE, label_rep, ".mini.Features.FeatureEntry")]
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=label_opt)
    entry.field.add(
        name="value", number=2, type=T.TYPE_MESSAGE, label=label_opt, type_name=".mini.Feature"
    )
    message("Example", [("features", 1, T.TYPE_MESSAGE, label_opt, ".mini.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mini.Example"))


def _bair_example(example_cls, frames, with_extras=True):
    ex = example_cls()
    for i, frame in enumerate(frames):
        ex.features.feature[f"{i}/image_aux1/encoded"].bytes_list.value.append(frame.tobytes())
        if with_extras:
            ex.features.feature[f"{i}/image_main/encoded"].bytes_list.value.append(
                (255 - frame).tobytes()
            )
            ex.features.feature[f"{i}/action"].float_list.value.extend([0.5, -1.0, 2.0, 0.0])
            ex.features.feature[f"{i}/step"].int64_list.value.append(-i)
    return ex.SerializeToString()


def _write_tfrecord(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", _masked(_crc32c(length))))
            f.write(data + struct.pack("<I", _masked(_crc32c(data))))


def test_bair_tfrecords_without_tensorflow(tmp_path):
    pytest.importorskip("google.protobuf")
    assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    example_cls = _example_class()
    rng = np.random.default_rng(1)
    root = tmp_path / "bair" / "softmotion30_44k"
    layout = {
        "train": {
            "traj_256_to_511.tfrecords": 1,
            "traj_0_to_255.tfrecords": 2,
            "traj_1024_to_1279.tfrecords": 1,
        },
        "test": {"traj_0_to_255.tfrecords": 1},
    }
    videos = {}
    for split, files in layout.items():
        for name, count in files.items():
            vids = [rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8) for _ in range(count)]
            videos[(split, name)] = vids
            # The real records' other features, in one file only: they make the CRCs slow here.
            extras = name == "traj_256_to_511.tfrecords"
            _write_tfrecord(
                str(root / split / name),
                [_bair_example(example_cls, v, with_extras=extras) for v in vids],
            )
    summary = converters.convert(
        "bair", str(tmp_path / "bair"), str(tmp_path / "out"), progress=False, vids_per_shard=3
    )
    train = _shards(str(tmp_path / "out/train"))
    assert len(train) == 4 and train.frame_shape == (64, 64, 3)
    assert sorted(os.listdir(tmp_path / "out/train")) == ["shard_0001.hdf5", "shard_0002.hdf5"]
    expected = (
        videos[("train", "traj_0_to_255.tfrecords")]
        + videos[("train", "traj_256_to_511.tfrecords")]
        + videos[("train", "traj_1024_to_1279.tfrecords")]
    )
    for i, video in enumerate(expected):
        np.testing.assert_array_equal(_video(train, i), video)
    np.testing.assert_array_equal(
        _video(_shards(str(tmp_path / "out/test")), 0),
        videos[("test", "traj_0_to_255.tfrecords")][0],
    )
    assert summary.split("test").num_frames == 30
    with h5py.File(tmp_path / "out/train/shard_0001.hdf5") as f:
        assert f["0"]["0"].dtype == np.uint8 and "videos" in f


def test_bair_detects_corruption_and_wrong_source(tmp_path):
    pytest.importorskip("google.protobuf")
    example_cls = _example_class()
    video = np.zeros((30, 64, 64, 3), np.uint8)
    path = tmp_path / "bair" / "train" / "traj_0_to_255.tfrecords"
    _write_tfrecord(str(path), [_bair_example(example_cls, video, with_extras=False)])
    (tmp_path / "bair" / "test").mkdir()
    with pytest.raises(SourceError, match=r"test holds no \*.tfrecords"):
        converters.make_plan("bair", str(tmp_path / "bair"))
    _write_tfrecord(
        str(tmp_path / "bair/test/traj_0_to_255.tfrecords"),
        [_bair_example(example_cls, video, with_extras=False)],
    )
    data = bytearray(path.read_bytes())
    data[500] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="fails its CRC"):
        converters.convert(
            "bair", str(tmp_path / "bair"), str(tmp_path / "out"), progress=False, verify_crc=True
        )
    data[4] ^= 1  # corrupt the length field itself
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="bad length CRC"):
        converters.make_plan("bair", str(tmp_path / "bair"))
    with pytest.raises(SourceError, match="softmotion30_44k"):
        converters.make_plan("bair", str(tmp_path))


def test_bair_unparsable_record_is_a_source_error():
    # A record whose data CRC was not checked: a length-delimited field that runs past the end.
    with pytest.raises(SourceError, match="x.tfrecords@12: not a readable tf.train.Example"):
        bair.example_video(b"\x0a\xff", "x.tfrecords@12")


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_sequences_center_crop_lanczos(tmp_path):
    from PIL import Image

    root = tmp_path / "cs" / "leftImg8bit_sequence"
    rng = np.random.default_rng(2)
    tree = {
        "train": [("aachen", 0, 0), ("aachen", 3, 0), ("bochum", 1, 100)],
        "val": [("frankfurt", 0, 19)],
        "test": [("berlin", 7, 0)],
    }
    sources = {}
    for split, seqs in tree.items():
        for city, seq, first in seqs:
            (root / split / city).mkdir(parents=True, exist_ok=True)
            for frame in range(first, first + 30):
                img = rng.integers(0, 256, (24, 48, 3), dtype=np.uint8)
                path = root / split / city / f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"
                Image.fromarray(img).save(path)
                sources.setdefault((split, city, seq), []).append(path)
    converters.convert("cityscapes", str(tmp_path / "cs"), str(tmp_path / "out"), progress=False)
    counts = {s: len(_shards(str(tmp_path / "out" / s))) for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 1}
    train = _shards(str(tmp_path / "out/train"))
    assert train.frame_shape == (128, 128, 3) and list(train.frame_counts) == [30, 30, 30]
    for index, key in enumerate(
        [("train", "aachen", 0), ("train", "aachen", 3), ("train", "bochum", 1)]
    ):
        video = _video(train, index)
        for t in (0, 29):
            with Image.open(sources[key][t]) as img:
                reference = np.asarray(
                    img.convert("RGB").crop((12, 0, 36, 24)).resize((128, 128), Image.LANCZOS)
                )
            np.testing.assert_array_equal(video[t], reference)
    with pytest.raises(SourceError, match="leftImg8bit_sequence"):
        converters.make_plan("cityscapes", str(tmp_path))


def _cityscapes_snippet(split_dir, city, seq, frames):
    from PIL import Image

    (split_dir / city).mkdir(parents=True, exist_ok=True)
    for frame in frames:
        path = split_dir / city / f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"
        Image.fromarray(np.full((8, 16, 3), frame % 256, np.uint8)).save(path)


def _cityscapes_source(root, train_frames=range(30)):
    for split in ("train", "val", "test"):
        frames = train_frames if split == "train" else range(30)
        _cityscapes_snippet(root / "leftImg8bit_sequence" / split, "aachen", 0, frames)


def test_a_frame_missing_from_a_cityscapes_snippet_drops_that_clip_not_the_later_ones(tmp_path):
    """Two snippets of one sequence (frames 0-29 and 100-129), frame 5 missing: the first
    snippet's clip is dropped and noted; the second is written whole, not shifted to start at
    frame 6 of the first and cross the scene cut."""
    _cityscapes_source(tmp_path, [f for f in range(30) if f != 5] + list(range(100, 130)))
    summary = converters.convert("cityscapes", str(tmp_path), str(tmp_path / "out"), progress=False)
    train = _shards(str(tmp_path / "out/train"))
    assert len(train) == 1
    np.testing.assert_array_equal(_video(train, 0)[:, 0, 0, 0], np.arange(100, 130))
    assert "train: 1 sequence(s) have a run of consecutive frames that is not a multiple of 30" in (
        str(summary)
    )


def test_a_missing_cityscapes_split_is_one_error_naming_it(tmp_path):
    _cityscapes_source(tmp_path)
    shutil.rmtree(tmp_path / "leftImg8bit_sequence" / "test")
    with pytest.raises(SourceError, match=r"has no test folder; unzip the whole leftImg8bit"):
        converters.make_plan("cityscapes", str(tmp_path))


def test_a_damaged_cityscapes_frame_is_a_source_error_naming_it(tmp_path):
    _cityscapes_source(tmp_path)
    city = tmp_path / "leftImg8bit_sequence" / "train" / "aachen"
    damaged = city / "aachen_000000_000005_leftImg8bit.png"
    damaged.write_bytes(b"not a png")
    with pytest.raises(
        SourceError,
        match=rf"^Cityscapes source: {re.escape(str(damaged))} is not a readable image \(.+\); "
        r"the download is damaged: unzip leftImg8bit_sequence_trainvaltest\.zip again or "
        rf"re-download it\. {re.escape(RESUME)}$",
    ):
        converters.convert("cityscapes", str(tmp_path), str(tmp_path / "out"), progress=False)


# ---------------------------------------------------------------- CARLA


def test_carla_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    videos = {}
    for split, names in (("train", ["a.pt", "b.pt"]), ("test", ["c.pt"])):
        (tmp_path / "carla" / "videos").mkdir(parents=True, exist_ok=True)
        with open(tmp_path / "carla" / f"video_{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "path"])
            for i, name in enumerate(names):
                video = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
                torch.save(torch.from_numpy(video), tmp_path / "carla" / "videos" / name)
                writer.writerow([i, f"videos/{name}"])
                videos.setdefault(split, []).append(video)
    converters.convert("carla", str(tmp_path / "carla"), str(tmp_path / "out"), progress=False)
    for split in ("train", "test"):
        shards = _shards(str(tmp_path / "out" / split))
        assert len(shards) == len(videos[split])
        for i, video in enumerate(videos[split]):
            np.testing.assert_array_equal(_video(shards, i), video)
    damaged = tmp_path / "carla" / "videos" / "c.pt"
    damaged.write_bytes(b"not a tensor")
    with pytest.raises(
        SourceError,
        match=rf"^{re.escape(str(damaged))} is not a readable torch\.save'd tensor \(.+\); the "
        r"download is damaged: untar no-traffic\.tar\.gz again or re-download it\. "
        rf"{re.escape(RESUME)}$",
    ):
        converters.convert("carla", str(tmp_path / "carla"), str(tmp_path / "bad"), progress=False)
    os.remove(tmp_path / "carla" / "video_test.csv")
    with pytest.raises(SourceError, match="no video_test.csv"):
        converters.make_plan("carla", str(tmp_path / "carla"))


# ---------------------------------------------------------------- UCF-101


def test_ucf101_official_split_lists_rgb_64(tmp_path):
    rng = np.random.default_rng(4)
    videos_dir, lists = tmp_path / "ucf" / "UCF-101", tmp_path / "ucf" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    files = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g09_c02.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    ]
    for name in files:
        _write_avi(str(videos_dir / name), _random_frames(rng, 3, 60, 80))
    (lists / "trainlist01.txt").write_text(
        "HandStandPushups/v_HandStandPushups_g09_c02.avi 37\n"
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
    )
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    converters.convert("ucf101", str(tmp_path / "ucf"), str(tmp_path / "out"), progress=False)
    train, test = _shards(str(tmp_path / "out/train")), _shards(str(tmp_path / "out/test"))
    assert (len(train), len(test)) == (2, 1) and train.frame_shape == (64, 64, 3)
    for shards, index, name in ((train, 0, files[1]), (train, 1, files[0]), (test, 0, files[2])):
        reference = np.stack(
            [
                cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), (64, 64))
                for f in _decode_avi(str(videos_dir / name))
            ]
        )
        np.testing.assert_array_equal(_video(shards, index), reference)
    with pytest.raises(SourceError, match="trainlist02.txt does not exist"):
        converters.make_plan("ucf101", str(tmp_path / "ucf"), ucf_split=2)


def test_unknown_dataset_and_option_selection():
    with pytest.raises(ValueError, match="Unknown dataset 'kth2'"):
        converters.make_plan("kth2", "/x")
    candidates = {"kth_split": "rvd", "num_digits": 3, "kth_crop": None, "image_size": None}
    assert converters.select_options("kth", candidates) == {"kth_split": "rvd"}
    assert converters.select_options("kth", candidates, given=["kth_split"]) == {"kth_split": "rvd"}
    # Options the user set that the converter does not take are an error, not silently dropped.
    with pytest.raises(
        ValueError,
        match=r"^smmnist does not take --kth_split, --image_size \(its "
        r"options: --num_digits\); remove them\.$",
    ):
        converters.select_options("smmnist", candidates, given=["kth_split", "image_size"])
    with pytest.raises(ValueError, match=r"carla does not take --image_size \(its options: none\)"):
        converters.select_options("carla", candidates, given=["image_size"])


def test_tfds_without_a_key_is_a_clear_error():
    with pytest.raises(ValueError, match="TFDS moving_mnist: set --tfds_key to the video feature"):
        converters.make_plan("tfds:moving_mnist", "")
