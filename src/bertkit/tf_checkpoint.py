"""Google's TensorFlow BERT checkpoints, read without TensorFlow or protobuf.

Google (and BioBERT, SciBERT, ...) released BERT as a folder:

    bert_config.json  vocab.txt  bert_model.ckpt.index  bert_model.ckpt.data-00000-of-00001

The checkpoint is a TensorFlow "tensor bundle", written by tf.compat.v1.train.Saver:

* ``PREFIX.data-SSSSS-of-NNNNN``: the shards, nothing but tensor bytes laid end to end.
* ``PREFIX.index``: an SSTable (LevelDB's table format) mapping each variable name to
  where its bytes are. Its layout, from the end of the file backwards:

      [data block]...[data block][metaindex block][index block][footer: 48 bytes]

  - footer: two BlockHandles (varint offset, varint size) for the metaindex and index
    blocks, zero-padded to 40 bytes, then the magic number 0xdb4775248b80fb57 (fixed64 LE).
  - every block is followed by a 5-byte trailer: 1 byte compression type (0 none,
    1 snappy) and the masked crc32c (fixed32 LE) of the block's stored bytes plus that
    type byte. TensorFlow writes its bundles uncompressed, but the format allows snappy.
  - a block is a run of entries, then an array of uint32 "restart points" (offsets of
    entries whose key is stored whole) and their count (uint32). Each entry is
    varint shared, varint non_shared, varint value_length, key[shared:], value: its key
    is the first `shared` bytes of the previous key followed by the bytes stored here
    (prefix compression). Restart points exist for binary search; a reader going
    through every entry in order needs only the count to know where the entries end.
  - the index block's values are BlockHandles of the data blocks, in key order; the
    metaindex block is empty in TensorFlow's tables.
  - the entries of the data blocks, in sorted key order: under the empty key a
    BundleHeaderProto {1: num_shards, 2: endianness (0 little, 1 big), 3: version};
    under each variable name a BundleEntryProto {1: dtype (DataType enum), 2: shape
    (TensorShapeProto {2: repeated dim {1: size}}), 3: shard_id, 4: offset, 5: size,
    6: crc32c (fixed32, masked), 7: slices (partitioned variables, not supported)}.
    Those few fields are decoded here from protobuf's wire format by hand.

Checksums are CRC-32C (Castagnoli), stored "masked" as TensorFlow and LevelDB do:
``((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2^32), so that a checksum of data
holding checksums is not trivially related to them. Every block's and every tensor's
checksum is verified; a file that fails any check is a one-line ValueError naming it.

crc32c must keep up with a 440 MB BERT-base shard without a compiled extension: see
crc32c() below for how numpy gets it to several hundred MB/s.

Variable names then map to Hugging Face's (tf_to_hf_name): ``/`` becomes ``.``,
``layer_3`` ``layer.3``, LayerNorm ``gamma``/``beta`` ``weight``/``bias``, and dense
``kernel`` [in, out] becomes ``weight`` [out, in] (transposed); optimizer slots
(adam_m, adam_v, ...) and bookkeeping (global_step, ...) are skipped.

Note on GELU: Google's modeling.py computes "gelu" with the tanh approximation in later
releases (erf in the first); Hugging Face's conversion has always kept
``hidden_act: "gelu"`` (exact erf), and so does tf_config, so a converted model matches
Hugging Face's published conversions of the same checkpoints.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bertkit.tokenizer import tf_do_lower_case

log = logging.getLogger(__name__)

# ================================================================ crc32c
#
# CRC-32C is linear over GF(2): feeding 4 bytes w into a register s gives
# Z4(s ^ w), where Z_n ("feed n zero bytes") is multiplication by x^(8n) modulo
# the CRC polynomial, a 32x32 bit matrix. A byte-at-a-time Python loop is
# slow; numpy does one operation over many values at once, so the data is
# split into `lanes` interleaved streams (word k goes to lane k % lanes) that
# advance together, one row of `lanes` words per step:
#
#     s <- Z_{4*lanes}(s) ^ row            (two lookups in 64K-entry tables)
#
# After the last row, lane i still owes a shift of Z4^(lanes - i); that is
# exactly the CRC of the `lanes` final states taken as a message of their own,
# computed by the same function, recursively. What does not fill a row is
# appended with the standard crc32c-combine: crc(A + B) = Z_len(B)(crc(A)) ^ crc(B)
# (for the raw register, started at 0). Throughput: BENCHMARKS.md, Google's TensorFlow checkpoints.

_POLY = 0x82F63B78  # Castagnoli, bit-reflected


def _byte_table() -> list[int]:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table.append(c)
    return table


_T8 = _byte_table()


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial, both bit-reflected (as zlib's crc32_combine)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) mod P; 1 << 30 is the polynomial x in reflected form
for _ in range(63):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def _shift(register: int, nbytes: int) -> int:
    """Z_nbytes(register): the raw CRC register after feeding it nbytes zero bytes."""
    k = 3  # x^(8n) = product of x^(2^(k+3)) over the bits k of n
    while nbytes:
        if nbytes & 1:
            register = _multmodp(_X2N[k & 63], register)
        nbytes >>= 1
        k += 1
    return register


@functools.cache
def _shift_tables(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Z_nbytes as two lookup tables on the low and high 16 bits of a register."""
    images = [_shift(1 << bit, nbytes) for bit in range(32)]  # the matrix's columns
    lo = np.zeros(1 << 16, np.uint32)
    hi = np.zeros(1 << 16, np.uint32)
    for bit in range(16):  # table[v | 1 << bit] = table[v] ^ image of the bit
        lo[1 << bit:2 << bit] = lo[:1 << bit] ^ np.uint32(images[bit])
        hi[1 << bit:2 << bit] = hi[:1 << bit] ^ np.uint32(images[bit + 16])
    return lo, hi


@functools.cache
def _word_tables() -> tuple[list[int], list[int]]:
    lo, hi = _shift_tables(4)
    return lo.tolist(), hi.tolist()


def _raw_words(words: np.ndarray) -> int:
    """The raw CRC register (started at 0) after feeding little-endian uint32 words."""
    n = len(words)
    if n <= 256:  # too few for numpy to pay: plain Python, one word at a time
        lo, hi = _word_tables()
        s = 0
        for w in words.tolist():
            v = s ^ w
            s = lo[v & 0xFFFF] ^ hi[v >> 16]
        return s
    # lanes ~ 16 sqrt(n), a power of two up to 65536 (measured best): fewer, longer numpy
    # calls, while the lanes' own CRC (the recursion) stays small; at least 4 rows.
    lanes = 1 << min(16, round(np.log2(16 * np.sqrt(n))), (n // 4).bit_length() - 1)
    rows = n // lanes
    lo, hi = _shift_tables(4 * lanes)
    grid = words[:rows * lanes].reshape(rows, lanes)
    s = grid[0].copy()
    index = np.empty(lanes, np.intp)
    a = np.empty(lanes, np.uint32)
    for row in grid[1:]:  # s = lo[s & 0xffff] ^ hi[s >> 16] ^ row, without temporaries
        np.bitwise_and(s, 0xFFFF, out=index, casting="unsafe")
        np.take(lo, index, out=a)
        np.right_shift(s, 16, out=index, casting="unsafe")
        np.take(hi, index, out=s)
        np.bitwise_xor(s, a, out=s)
        np.bitwise_xor(s, row, out=s)
    register = _raw_words(s)  # lane i still owes Z4^(lanes - i): the CRC of the lanes
    tail = words[rows * lanes:]
    if len(tail):
        register = _shift(register, 4 * len(tail)) ^ _raw_words(tail)
    return register


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC-32C (Castagnoli) of data, as TensorFlow and LevelDB compute it."""
    b = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    whole = len(b) // 4 * 4
    register = _raw_words(b[:whole].view("<u4")) if whole else 0
    for byte in b[whole:].tolist():
        register = _T8[(register ^ byte) & 0xFF] ^ (register >> 8)
    # Starting the register at 0xFFFFFFFF instead of 0 adds Z_len(0xFFFFFFFF) (linearity).
    return _shift(0xFFFFFFFF, len(b)) ^ register ^ 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Undo TensorFlow's crc mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ================================================================ snappy

def snappy_decompress(data: bytes, where: str = "snappy block") -> bytes:
    """Decode one raw snappy block: varint length, then literals and back-references."""
    size, pos = _varint(data, 0, where)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal: length-1 in the tag's top 6 bits, or in 1-4 bytes after it
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > len(data):
                    raise ValueError(f"{where}: snappy literal length runs past the end")
                length = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > len(data):
                raise ValueError(f"{where}: snappy literal runs past the end")
            out += data[pos:pos + length]
            pos += length
            continue
        if kind == 1:  # copy, 3-bit length-4, 11-bit offset
            if pos + 1 > len(data):
                raise ValueError(f"{where}: snappy copy runs past the end")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:  # copy, 6-bit length-1, 16- or 32-bit offset
            width = 2 if kind == 2 else 4
            if pos + width > len(data):
                raise ValueError(f"{where}: snappy copy runs past the end")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos:pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise ValueError(f"{where}: snappy copy offset {offset} outside the {len(out)} bytes decoded so far")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # overlapping copy: the last `offset` bytes repeat
            out += (out[start:] * (length // offset + 1))[:length]
    if len(out) != size:
        raise ValueError(f"{where}: snappy data decodes to {len(out)} bytes, its header says {size}")
    return bytes(out)


# ================================================================ protobuf wire format

def _varint(buf: bytes, pos: int, where: str, limit: int | None = None) -> tuple[int, int]:
    """A base-128 varint at buf[pos:limit] -> (value, position after it)."""
    limit = len(buf) if limit is None else limit
    result = shift = 0
    while True:
        if pos >= limit:
            raise ValueError(f"{where}: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"{where}: varint longer than 10 bytes")


WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


def _fields(buf: bytes, where: str, wire_types: dict[int, int]) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: int for varint/fixed, bytes for length-delimited.
    wire_types: the wire type each known field must have (a mismatch is a damaged message)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        number, wire = key >> 3, key & 7
        if number in wire_types and wire != wire_types[number]:
            raise ValueError(f"{where}: protobuf field {number} is {WIRE_NAMES.get(wire, f'wire type {wire}')}, "
                             f"expected {WIRE_NAMES[wire_types[number]]}")
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire in (1, 5):  # fixed64, fixed32
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ValueError(f"{where}: truncated fixed{width * 8} field {number}")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(buf, pos, where)
            if pos + length > len(buf):
                raise ValueError(f"{where}: field {number} runs past the end of its message")
            value = bytes(buf[pos:pos + length])
            pos += length
        else:
            raise ValueError(f"{where}: unsupported protobuf wire type {wire} (field {number})")
        yield number, value


def _int64(value: int) -> int:
    """A varint read as protobuf's int64 (negative numbers are 10-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# ================================================================ SSTable (the .index file)

FOOTER_SIZE = 48
TABLE_MAGIC = 0xDB4775248B80FB57
BLOCK_TRAILER = 5  # compression type byte + masked crc32c


def _block_handle(buf: bytes, pos: int, where: str) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos, where)
    size, pos = _varint(buf, pos, where)
    return (offset, size), pos


def _read_block(table: bytes, handle: tuple[int, int], where: str) -> bytes:
    """A block's contents, its CRC checked and snappy undone."""
    offset, size = handle
    if offset + size + BLOCK_TRAILER > len(table):
        raise ValueError(f"{where}: block at {offset} (+{size} bytes) runs past the end of the "
                         f"{len(table)}-byte file (truncated?)")
    stored = table[offset:offset + size + 1]  # contents + compression type: what the CRC covers
    kind = stored[-1]
    (masked,) = struct.unpack_from("<I", table, offset + size + 1)
    if crc32c(stored) != unmask_crc(masked):
        raise ValueError(f"{where}: block at {offset} fails its crc32c check (corrupt file)")
    if kind == 0:
        return stored[:-1]
    if kind == 1:
        return snappy_decompress(stored[:-1], f"{where}: block at {offset}")
    raise ValueError(f"{where}: block at {offset} has unknown compression type {kind}")


def _block_entries(block: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each entry of a block, in order, undoing the prefix compression."""
    if len(block) < 4:
        raise ValueError(f"{where}: block of {len(block)} bytes is too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts  # the entries stop where the restart array starts
    if end < 0:
        raise ValueError(f"{where}: block claims {num_restarts} restart points, more than fit")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, where, end)
        unshared, pos = _varint(block, pos, where, end)
        length, pos = _varint(block, pos, where, end)
        if shared > len(key) or pos + unshared + length > end:
            raise ValueError(f"{where}: malformed block entry at {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def read_sstable(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-format table file, in key order, all CRCs checked."""
    where = str(path)
    table = path.read_bytes()
    if len(table) < FOOTER_SIZE:
        raise ValueError(f"{where}: {len(table)} bytes, too short for a table footer ({FOOTER_SIZE} bytes)")
    footer = table[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise ValueError(f"{where}: bad magic number 0x{magic:016x} (not a TensorFlow checkpoint index, "
                         f"or truncated)")
    metaindex, pos = _block_handle(footer, 0, f"{where}: footer")
    index, _ = _block_handle(footer, pos, f"{where}: footer")
    _read_block(table, metaindex, where)  # empty in TensorFlow's tables; read only to check its CRC
    for _, value in _block_entries(_read_block(table, index, where), where):
        handle, _ = _block_handle(value, 0, f"{where}: index entry")
        yield from _block_entries(_read_block(table, handle, where), where)


# ================================================================ tensor bundles

# DataType enum (tensorflow/core/framework/types.proto) -> numpy dtype; DT_BFLOAT16 is
# widened to float32 (exact: bfloat16 is float32's top 16 bits), as numpy has no bfloat16.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          9: np.int64, 10: np.bool_, 14: "bfloat16", 17: np.uint16, 19: np.float16,
          22: np.uint32, 23: np.uint64}
DT_STRING = 7
DTYPE_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


# Wire types of the fields read: 0 varint, 2 length-delimited, 5 fixed32.
HEADER_FIELDS = {1: 0, 2: 0}  # BundleHeaderProto: num_shards, endianness
ENTRY_FIELDS = {1: 0, 2: 2, 3: 0, 4: 0, 5: 0, 6: 5, 7: 2}  # BundleEntryProto
SHAPE_FIELDS = {2: 2, 3: 0}  # TensorShapeProto: dim, unknown_rank
DIM_FIELDS = {1: 0}  # TensorShapeProto.Dim: size
MAX_SHARDS = 1 << 16


class _Entry:
    """The fields of a BundleEntryProto this reader uses."""

    __slots__ = ("dtype", "shape", "shard", "offset", "size", "crc", "sliced")

    def __init__(self, value: bytes, where: str):
        self.dtype, self.shape, self.shard, self.offset, self.size = 0, [], 0, 0, 0
        self.crc, self.sliced = None, False
        for number, v in _fields(value, where, ENTRY_FIELDS):
            if number == 1:
                self.dtype = v
            elif number == 2:  # TensorShapeProto: field 2 repeated Dim {1: size}
                for n, dim in _fields(v, where, SHAPE_FIELDS):
                    if n == 2:
                        self.shape.append(next((_int64(s) for k, s in _fields(dim, where, DIM_FIELDS) if k == 1), 0))
                    elif n == 3 and dim:
                        raise ValueError(f"{where}: shape of unknown rank")
            elif number == 3:
                self.shard = _int64(v)
            elif number == 4:
                self.offset = _int64(v)
            elif number == 5:
                self.size = _int64(v)
            elif number == 6:
                self.crc = v
            elif number == 7:
                self.sliced = True


def checkpoint_prefix(directory_or_prefix: str | os.PathLike) -> Path:
    """The checkpoint prefix (PATH of PATH.index and PATH.data-*) in a folder, or given directly.

    A folder: bert_model.ckpt, else the checkpoint named by TensorFlow's `checkpoint` state
    file, else its one X.index that has X.data-* beside it.
    """
    path = Path(directory_or_prefix).expanduser()
    if path.is_dir():
        if (path / "bert_model.ckpt.index").is_file():
            return path / "bert_model.ckpt"
        state = path / "checkpoint"  # model_checkpoint_path: "model.ckpt-1000"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(errors="replace"), re.MULTILINE)
            if m and (path / (m.group(1) + ".index")).is_file():
                return path / m.group(1)
        found = sorted(p.with_suffix("") for p in path.glob("*.index")
                       if list(path.glob(glob.escape(p.stem) + ".data-*")))
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(f"{path}: no TensorFlow checkpoint (X.index with X.data-* beside it)")
        raise ValueError(f"{path}: {len(found)} checkpoints ({', '.join(p.name for p in found)}); "
                         f"pass the one to read as a path prefix, e.g. {found[-1]}")
    prefix = Path(str(path).removesuffix(".index"))
    if not Path(f"{prefix}.index").is_file():
        raise FileNotFoundError(f"{prefix}.index: no such TensorFlow checkpoint index")
    return prefix


def _read_index(prefix: Path) -> tuple[list[Path], list[tuple[str, _Entry]], bool]:
    """(data shard paths, [(variable name, entry)] in name order, big-endian?) of a checkpoint."""
    index = Path(f"{prefix}.index")
    where = str(index)
    num_shards, big_endian, entries = None, False, []
    for key, value in read_sstable(index):
        if key == b"":  # BundleHeaderProto {1: num_shards, 2: endianness, 3: version}
            header = dict(_fields(value, f"{where}: header", HEADER_FIELDS))
            num_shards, big_endian = _int64(header.get(1, 0)), header.get(2, 0) == 1
            continue
        if num_shards is None:  # the header's empty key sorts first
            raise ValueError(f"{where}: no bundle header (not a TensorFlow V2 checkpoint index)")
        name = key.decode("utf-8", errors="replace")
        if key.startswith(b"\x00"):  # slices of a partitioned variable are stored under encoded keys
            raise ValueError(f"{where}: partitioned variables (tensor slices) are not supported")
        entries.append((name, _Entry(value, f"{where}: entry {name!r}")))
    if num_shards is None:
        raise ValueError(f"{where}: no bundle header (not a TensorFlow V2 checkpoint index)")
    if not (0 if not entries else 1) <= num_shards <= MAX_SHARDS:
        raise ValueError(f"{where}: header says {num_shards} data shards")
    shards = [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(f"{shard}: missing data shard of checkpoint {prefix}")
    return shards, entries, big_endian


def _decode_strings(buf: np.ndarray, count: int, where: str) -> tuple[np.ndarray, int]:
    """A DT_STRING tensor's bytes -> (object array of bytes, the crc32c TensorFlow computes).

    Layout: count varint64 lengths, the masked crc32c of the lengths (each as uint32 LE, or
    uint64 past 4 GB), then the strings; the entry's crc covers lengths, that crc, strings.
    """
    data = buf.tobytes()
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = _varint(data, pos, where)
        lengths.append(n)
    packed = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
    if pos + 4 > len(data):
        raise ValueError(f"{where}: string tensor truncated")
    stored = data[pos:pos + 4]
    if unmask_crc(int.from_bytes(stored, "little")) != crc32c(packed):
        raise ValueError(f"{where}: string lengths fail their crc32c check (corrupt file)")
    pos += 4
    strings = np.empty(count, dtype=object)
    for i, n in enumerate(lengths):
        if pos + n > len(data):
            raise ValueError(f"{where}: string tensor truncated")
        strings[i] = data[pos:pos + n]
        pos += n
    return strings, crc32c(packed + stored + data[pos - sum(lengths):pos])


def _read_tensor(files: dict[int, object], prefix: Path, shards: list[Path], name: str, entry: _Entry,
                 big_endian: bool) -> np.ndarray:
    """One tensor's array, read from its shard and checked against its crc32c."""
    if not 0 <= entry.shard < len(shards):
        raise ValueError(f"{prefix}.index: variable {name!r} is in data shard {entry.shard}, "
                         f"the checkpoint has {len(shards)}")
    path = shards[entry.shard]
    where = f"{path}: variable {name!r}"
    if entry.sliced:
        raise ValueError(f"{where}: partitioned variables (tensor slices) are not supported")
    if entry.dtype not in DTYPES and entry.dtype != DT_STRING:
        kind = DTYPE_NAMES.get(entry.dtype, f"DataType {entry.dtype}")
        raise ValueError(f"{where}: unsupported dtype {kind}")
    if any(d < 0 for d in entry.shape):
        raise ValueError(f"{where}: invalid shape {entry.shape}")
    count = int(np.prod(entry.shape, dtype=np.int64))
    dtype = DTYPES.get(entry.dtype)
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize if dtype else None
    if itemsize is not None and entry.size != count * itemsize:
        raise ValueError(f"{where}: {entry.size} bytes for shape {entry.shape} of {itemsize}-byte items")
    if entry.offset < 0 or entry.size < 0:
        raise ValueError(f"{where}: invalid offset {entry.offset} / size {entry.size}")
    if entry.shard not in files:
        files[entry.shard] = open(path, "rb")
    f = files[entry.shard]
    file_size = os.fstat(f.fileno()).st_size
    if entry.offset + entry.size > file_size:
        raise ValueError(f"{where}: needs bytes {entry.offset}..{entry.offset + entry.size} "
                         f"but the file has {file_size} (truncated data file)")
    buf = np.empty(entry.size, np.uint8)
    f.seek(entry.offset)
    if f.readinto(memoryview(buf)) != entry.size:
        raise ValueError(f"{where}: short read (truncated data file)")
    if entry.dtype == DT_STRING:
        if big_endian:
            raise ValueError(f"{where}: string tensors of big-endian checkpoints are not supported")
        array, crc = _decode_strings(buf, count, where)
        array = array.reshape(entry.shape)
    else:
        crc = crc32c(buf)
        if dtype == "bfloat16":
            array = (buf.view("<u2" if not big_endian else ">u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = buf.view(np.dtype(dtype).newbyteorder(">" if big_endian else "<"))
            if big_endian and array.dtype.itemsize > 1:
                array = array.astype(np.dtype(dtype))  # to native order
        array = array.reshape(entry.shape)
    if entry.crc is None or crc != unmask_crc(entry.crc):
        raise ValueError(f"{where}: data fails its crc32c check (corrupt data file)")
    return array


def read_tf_variables(directory_or_prefix: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Every variable of a TensorFlow checkpoint, (name, array), in name order, CRC-checked.

    One tensor is read at a time; only the index is held whole. float32/16/64, bfloat16
    (as float32), signed and unsigned ints, bool and string (object array of bytes) tensors.
    """
    prefix = checkpoint_prefix(directory_or_prefix)
    shards, entries, big_endian = _read_index(prefix)
    files: dict[int, object] = {}
    try:
        for name, entry in entries:
            yield name, _read_tensor(files, prefix, shards, name, entry, big_endian)
    finally:
        for f in files.values():
            f.close()


# ================================================================ names

# Optimizer slots (Google's AdamWeightDecayOptimizer: adam_m/adam_v; tf.train optimizers:
# Adam, Adam_1, Momentum, ...; LAMB variants) and training bookkeeping: not model weights.
SLOT_SUFFIXES = ("adam_m", "adam_v", "Adam", "Adam_1", "Momentum", "Adagrad", "RMSProp", "RMSProp_1",
                 "lamb_m", "lamb_v", "ExponentialMovingAverage")
SKIPPED = {"global_step", "bad_steps", "good_steps", "loss_scale", "current_loss_scale",
           "beta1_power", "beta2_power", "_CHECKPOINTABLE_OBJECT_GRAPH"}

_LAYER = r"bert/encoder/layer_(\d+)/"
_DENSE = r"(kernel|bias)"
_NORM = r"LayerNorm/(gamma|beta)"
# (Google's name, Hugging Face's name with {1}, {2}... for the groups); kernel -> weight
# (transposed), gamma -> weight, beta -> bias.
NAMES = [
    (r"bert/embeddings/(word_embeddings|position_embeddings|token_type_embeddings)",
     "bert.embeddings.{1}.weight"),
    (r"bert/embeddings/" + _NORM, "bert.embeddings.LayerNorm.{1}"),
    (_LAYER + r"attention/self/(query|key|value)/" + _DENSE, "bert.encoder.layer.{1}.attention.self.{2}.{3}"),
    (_LAYER + r"attention/output/dense/" + _DENSE, "bert.encoder.layer.{1}.attention.output.dense.{2}"),
    (_LAYER + r"attention/output/" + _NORM, "bert.encoder.layer.{1}.attention.output.LayerNorm.{2}"),
    (_LAYER + r"intermediate/dense/" + _DENSE, "bert.encoder.layer.{1}.intermediate.dense.{2}"),
    (_LAYER + r"output/dense/" + _DENSE, "bert.encoder.layer.{1}.output.dense.{2}"),
    (_LAYER + r"output/" + _NORM, "bert.encoder.layer.{1}.output.LayerNorm.{2}"),
    (r"bert/pooler/dense/" + _DENSE, "bert.pooler.dense.{1}"),
    (r"cls/predictions/transform/dense/" + _DENSE, "cls.predictions.transform.dense.{1}"),
    (r"cls/predictions/transform/" + _NORM, "cls.predictions.transform.LayerNorm.{1}"),
    (r"cls/predictions/output_bias", "cls.predictions.bias"),
    # Output layers made with tf.get_variable([out, hidden]) and matmul(transpose_b=True):
    # already [out, in], no transpose. NSP; run_classifier.py; run_squad.py.
    (r"cls/seq_relationship/output_(weights|bias)", "cls.seq_relationship.{1}"),
    (r"output_(weights|bias)", "classifier.{1}"),
    (r"cls/squad/output_(weights|bias)", "qa_outputs.{1}"),
]
_NAMES = [(re.compile(pattern + "$"), target) for pattern, target in NAMES]
_RENAME_PART = {"kernel": "weight", "gamma": "weight", "beta": "bias", "weights": "weight"}


def tf_to_hf_name(name: str, *, source: str | os.PathLike | None = None) -> tuple[str, bool] | None:
    """Google's variable name -> (Hugging Face BERT name, needs_transpose), None for what is
    not a weight (optimizer slots, global_step, ...). Unknown names raise ValueError."""
    last = name.rsplit("/", 1)[-1]
    if name in SKIPPED or last in SLOT_SUFFIXES:
        return None
    for pattern, target in _NAMES:
        m = pattern.match(name)
        if m:
            parts = [_RENAME_PART.get(g, g) for g in m.groups()]
            return target.format(None, *parts), last == "kernel"
    where = f"{source}: " if source else ""
    raise ValueError(f"{where}unknown variable {name!r}: not a BERT weight bertkit knows how to map")


def read_tf_weights(directory: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's weights as Hugging Face-named torch tensors (kernels transposed to
    [out, in]), one at a time, optimizer slots and bookkeeping skipped: ready for
    bertkit.checkpoint.load_state."""
    prefix = checkpoint_prefix(directory)
    for name, array in read_tf_variables(prefix):
        mapped = tf_to_hf_name(name, source=f"{prefix}.index")
        if mapped is None:
            continue
        hf_name, transpose = mapped
        if transpose and array.ndim != 2:
            raise ValueError(f"{prefix}.index: kernel {name!r} has shape {list(array.shape)}, expected 2-D")
        tensor = torch.from_numpy(np.ascontiguousarray(array.T) if transpose else array)
        yield hf_name, tensor


# ================================================================ config, casing, conversion

CONFIG_KEYS = {"vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
               "intermediate_size": int, "hidden_act": str, "hidden_dropout_prob": float,
               "attention_probs_dropout_prob": float, "max_position_embeddings": int,
               "type_vocab_size": int, "initializer_range": float}


def _folder(directory: str | os.PathLike) -> Path:
    path = Path(directory).expanduser()
    return path if path.is_dir() else path.parent


def tf_config(directory: str | os.PathLike) -> dict:
    """bert_config.json as a Hugging Face BERT config dict (BertConfig.from_dict accepts it).

    Google's keys are already Hugging Face's; layer_norm_eps (1e-12 in Google's code),
    model_type and pad_token_id are added. Keys of variants (e.g. Chinese BERT's
    directionality, pooler_*) are kept, as Hugging Face keeps them.
    """
    path = _folder(directory) / "bert_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no bert_config.json beside the checkpoint")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key, kind in CONFIG_KEYS.items():
        value = raw.get(key)
        if key not in raw or isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise ValueError(f"{path}: {key} must be {'a number' if kind is float else kind.__name__}, "
                             f"got {value!r}" if key in raw else f"{path}: missing {key}")
    return {**raw, "layer_norm_eps": 1e-12, "model_type": "bert", "pad_token_id": raw.get("pad_token_id", 0)}


def _expected_shapes(config: dict, names: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """What each Hugging Face name's shape must be under config (heads' label counts from names)."""
    v, h, i = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    shapes = {"bert.embeddings.word_embeddings.weight": (v, h),
              "bert.embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
              "bert.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
              "bert.pooler.dense.weight": (h, h), "bert.pooler.dense.bias": (h,),
              "cls.predictions.transform.dense.weight": (h, h), "cls.predictions.bias": (v,),
              "cls.predictions.transform.dense.bias": (h,),
              "cls.seq_relationship.weight": (2, h), "cls.seq_relationship.bias": (2,),
              "qa_outputs.weight": (2, h), "qa_outputs.bias": (2,)}
    labels = names.get("classifier.weight", (0,))[0]
    shapes.update({"classifier.weight": (labels, h), "classifier.bias": (labels,)})
    for norm in ("bert.embeddings.LayerNorm", "cls.predictions.transform.LayerNorm"):
        shapes.update({f"{norm}.weight": (h,), f"{norm}.bias": (h,)})
    for n in range(config["num_hidden_layers"]):
        layer = f"bert.encoder.layer.{n}."
        for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes.update({f"{layer}{part}.weight": (h, h), f"{layer}{part}.bias": (h,)})
        shapes.update({f"{layer}intermediate.dense.weight": (i, h), f"{layer}intermediate.dense.bias": (i,),
                       f"{layer}output.dense.weight": (h, i), f"{layer}output.dense.bias": (h,)})
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({f"{layer}{norm}.weight": (h,), f"{layer}{norm}.bias": (h,)})
    return shapes


def _architecture(names: set[str]) -> str:
    if {"cls.predictions.bias", "cls.seq_relationship.weight"} <= names:
        return "BertForPreTraining"
    if "cls.predictions.bias" in names:
        return "BertForMaskedLM"
    if "cls.seq_relationship.weight" in names:
        return "BertForNextSentencePrediction"
    if "classifier.weight" in names:
        return "BertForSequenceClassification"
    if "qa_outputs.weight" in names:
        return "BertForQuestionAnswering"
    return "BertModel"


def convert_tf_checkpoint(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a Google TF BERT folder as a Hugging Face one: model.safetensors, config.json,
    vocab.txt and tokenizer_config.json. Built in a temporary sibling folder, then renamed
    into place, so out_dir is either complete or absent. out_dir must not exist (or be empty).
    """
    from safetensors.torch import save_file

    src, out = Path(src_dir).expanduser(), Path(out_dir).expanduser()
    prefix = checkpoint_prefix(src)
    config = tf_config(src if src.is_dir() else prefix)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty folder")
    tensors = dict(read_tf_weights(prefix))
    names = {k: tuple(t.shape) for k, t in tensors.items()}
    expected = _expected_shapes(config, names)
    for name, shape in names.items():
        if name not in expected:
            raise ValueError(f"{prefix}.index: {name!r} (layer beyond num_hidden_layers="
                             f"{config['num_hidden_layers']} in bert_config.json?)")
        if shape != expected[name]:
            raise ValueError(f"{prefix}.index: {name!r} has shape {list(shape)}, bert_config.json implies "
                             f"{list(expected[name])}")
    missing = [n for n in expected if n.startswith("bert.") and not n.startswith("bert.pooler.") and n not in names]
    if missing:
        raise ValueError(f"{prefix}.index: missing encoder weights: {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    architecture = _architecture(set(names))
    if architecture == "BertModel":  # as Hugging Face saves a bare BertModel: no `bert.` prefix
        tensors = {k.removeprefix("bert."): t for k, t in tensors.items()}
    if architecture == "BertForSequenceClassification":
        labels = names["classifier.weight"][0]
        config["id2label"] = {str(n): f"LABEL_{n}" for n in range(labels)}
        config["label2id"] = {f"LABEL_{n}": n for n in range(labels)}
    config["architectures"] = [architecture]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
        folder = src if src.is_dir() else prefix.parent
        if (folder / "vocab.txt").is_file():
            shutil.copyfile(folder / "vocab.txt", tmp / "vocab.txt")
            lower = tf_do_lower_case(folder)
            tokenizer = {"tokenizer_class": "BertTokenizer", "model_max_length": config["max_position_embeddings"]}
            if lower is None:
                log.warning("%s: cannot tell whether the model is cased; tokenizer_config.json leaves "
                            "do_lower_case unset (tokenizers default to lowercasing)", folder)
            else:
                tokenizer["do_lower_case"] = lower
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
        else:
            log.warning("%s: no vocab.txt; the converted model has no tokenizer files", folder)
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_tf_checkpoint(directory: str | os.PathLike) -> bool:
    """A folder holding bert_config.json and a TensorFlow checkpoint (X.index beside X.data-*).

    True also when the folder holds several checkpoints (model.ckpt-1000, model.ckpt-2000,
    no `checkpoint` file to choose): reading it then says which to pass.
    """
    path = Path(directory).expanduser()
    if not path.is_dir() or not (path / "bert_config.json").is_file():
        return False
    return any(list(path.glob(glob.escape(index.stem) + ".data-*")) for index in path.glob("*.index"))


__all__ = ["is_tf_checkpoint", "read_tf_variables", "tf_to_hf_name", "read_tf_weights", "tf_config",
           "tf_do_lower_case", "convert_tf_checkpoint", "checkpoint_prefix", "crc32c", "read_sstable",
           "snappy_decompress"]
