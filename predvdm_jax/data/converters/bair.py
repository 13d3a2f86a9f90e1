"""BAIR robot pushing (spec §A.6) from the original TFRecords, without TensorFlow.

Source: ``softmotion30_44k/{train,test}/*.tfrecords`` (or the folder above
it). Each record is a ``tf.train.Example``; frame ``i`` (0…29) is the raw
64×64×3 RGB bytes of feature ``'<i>/image_aux1/encoded'``. Output: ``train``
43264 and ``test`` 256 videos of 30 frames, RGB uint8 (the original stored
int64). Files are taken in natural order (``traj_0_to_255`` before
``traj_256_to_511``), records in file order.

TFRecord framing: uint64 length, uint32 masked CRC32C of the length, the
data, uint32 masked CRC32C of the data. The length CRC is always checked; the
data CRC when the ``crc32c`` package is installed (pure Python would be far
too slow for 370 kB records).
"""

from __future__ import annotations

import glob
import os
import struct

import numpy as np

from predvdm_jax.data import hdf5
from predvdm_jax.data.converters import common

NUM_FRAMES = 30
FRAME_SHAPE = (64, 64, 3)
FRAME_KEY = "{}/image_aux1/encoded"
_CASTAGNOLI = 0x82F63B78


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _CASTAGNOLI if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c():
    try:
        import crc32c

        return crc32c.crc32c
    except ImportError:
        return None


def masked_crc(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record_offsets(path: str) -> list[int]:
    """Byte offsets of the records of a TFRecord file (reads only the headers)."""
    offsets, size = [], os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise common.SourceError(
                    f"{path}: truncated TFRecord header at byte {pos}; re-download."
                )
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(crc32c_python(header[:8])) != length_crc:
                raise common.SourceError(
                    f"{path}: bad length CRC at byte {pos}; not a TFRecord file or "
                    f"corrupted, re-download it."
                )
            offsets.append(pos)
            pos += 12 + length + 4
            f.seek(pos)
        if pos != size:
            raise common.SourceError(
                f"{path}: last record runs past the end of the file; re-download."
            )
    return offsets


def read_record(path: str, offset: int, verify_data_crc: bool | None = None) -> bytes:
    crc_fn = _fast_crc32c() if verify_data_crc in (None, True) else None
    if verify_data_crc and crc_fn is None:
        crc_fn = crc32c_python
    with open(path, "rb") as f:
        f.seek(offset)
        length, _ = struct.unpack("<QI", f.read(12))
        data = f.read(length)
        (data_crc,) = struct.unpack("<I", f.read(4))
    if crc_fn is not None and masked_crc(crc_fn(data)) != data_crc:
        raise common.SourceError(
            f"{path}: record at byte {offset} fails its CRC; the file is corrupted, re-download it."
        )
    return data


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_example(data: bytes) -> dict[str, list]:
    """A serialized ``tf.train.Example`` → {feature name: list of bytes / ints / floats}.

    Example{features=1: Features{feature=1: map<string, Feature>}};
    Feature{bytes_list=1, float_list=2, int64_list=3}, each {value=1 repeated}.
    """
    features = {}
    for number, _, features_msg in _fields(data):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features_msg):
            if entry_number != 1:
                continue
            name, feature = None, b""
            for n, _, v in _fields(entry):
                if n == 1:
                    name = v.decode("utf-8")
                elif n == 2:
                    feature = v
            values = []
            for kind, _, list_msg in _fields(feature):
                for n, wire, v in _fields(list_msg):
                    if kind == 1:
                        values.append(v)
                    elif kind == 2:
                        values.extend(
                            np.frombuffer(v, "<f4").tolist()
                            if wire == 2
                            else [struct.unpack("<f", v)[0]]
                        )
                    elif kind == 3:
                        if wire == 2:
                            pos = 0
                            while pos < len(v):
                                x, pos = _varint(v, pos)
                                values.append(x - (1 << 64) if x >= 1 << 63 else x)
                        else:
                            values.append(v - (1 << 64) if v >= 1 << 63 else v)
            features[name] = values
    return features


def example_video(data: bytes, where: str) -> np.ndarray:
    try:
        features = parse_example(data)
    except (IndexError, ValueError, struct.error) as e:
        raise common.SourceError(
            f"{where}: not a readable tf.train.Example ({e}); the file is "
            f"corrupted, re-download it."
        ) from None
    frames = []
    for i in range(NUM_FRAMES):
        values = features.get(FRAME_KEY.format(i))
        if not values or len(values[0]) != np.prod(FRAME_SHAPE):
            raise common.SourceError(
                f"{where}: feature {FRAME_KEY.format(i)!r} is missing or not "
                f"64×64×3 raw bytes; is this softmotion30_44k?"
            )
        frames.append(np.frombuffer(values[0], np.uint8).reshape(FRAME_SHAPE))
    return np.stack(frames)


def _split_folders(src: str) -> str:
    for root in (src, os.path.join(src, "softmotion30_44k")):
        if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
            return root
    raise common.SourceError(
        f"BAIR source {src} has no softmotion30_44k/{{train,test}} folders; "
        f"expected the untarred bair_robot_pushing_dataset_v0.tar."
    )


def plan(src: str, verify_crc: bool | None = None) -> common.ConversionPlan:
    common.require_dir(src, "BAIR source")
    root = _split_folders(src)
    splits, notes = [], []
    for split in ("train", "test"):
        files = sorted(glob.glob(os.path.join(root, split, "*.tfrecords")), key=hdf5.natural_key)
        if not files:
            raise common.SourceError(
                f"BAIR source: {os.path.join(root, split)} holds no *.tfrecords "
                f"files; expected softmotion30_44k/{split}/traj_*.tfrecords."
            )
        items = [(path, offset) for path in files for offset in record_offsets(path)]
        load = lambda item, v=verify_crc: example_video(
            read_record(item[0], item[1], v), f"{item[0]}@{item[1]}"
        )
        splits.append(common.SplitPlan(split, items, load=load))
    if verify_crc is None and _fast_crc32c() is None:
        notes.append(
            "record data CRCs not checked (pip install crc32c to check them); "
            "length CRCs were checked"
        )
    return common.ConversionPlan("bair", splits, {}, notes)
