"""Minimal safetensors reader/writer on json + numpy (no safetensors package on this machine).

Format (from the safetensors spec): an 8-byte little-endian unsigned header length N, N bytes
of JSON, then the raw little-endian tensor bytes. Each JSON entry other than "__metadata__" is
{"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the byte after the
header. "__metadata__" maps strings to strings.

Reading is strict on purpose: this module feeds a checker, so a malformed file must be reported
(SafetensorsError names the file and the problem) rather than silently half-read.
"""

import json
import struct

import numpy as np

MAX_HEADER_BYTES = 100 * 1024 * 1024

# dtype name -> (numpy dtype for the raw bytes, bytes per element)
_DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
}


class SafetensorsError(ValueError):
    pass


def _bf16_to_f32(raw_u16):
    # bfloat16 is the top half of an IEEE float32: widen by shifting into the high 16 bits.
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def read(path):
    """Return (tensors: dict name -> numpy array, metadata: dict str -> str).

    BF16 is widened to float32; every other dtype keeps its numpy equivalent. Raises
    SafetensorsError naming `path` on any structural problem."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read: {e.strerror}") from e
    if len(blob) < 8:
        raise SafetensorsError(f"{path}: file too short for the 8-byte header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(blob):
        raise SafetensorsError(f"{path}: header length {header_len} exceeds the file size {len(blob)}")
    try:
        header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + header_len:]

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")

    tensors = {}
    for name, info in header.items():
        where = f"{path}: tensor '{name}'"
        if not isinstance(info, dict):
            raise SafetensorsError(f"{where}: entry is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{where}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise SafetensorsError(f"{where}: bad data_offsets {offsets!r}")
        begin, end = offsets
        np_dtype, size = _DTYPES[dtype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= begin <= end <= len(data)):
            raise SafetensorsError(f"{where}: data_offsets {offsets} outside the {len(data)}-byte data area")
        if end - begin != count * size:
            raise SafetensorsError(f"{where}: {end - begin} bytes for shape {shape} of {dtype} "
                                   f"(expected {count * size})")
        arr = np.frombuffer(data[begin:end], dtype=np_dtype).copy().reshape(shape)
        if dtype == "BF16":
            arr = _bf16_to_f32(arr)
        tensors[name] = arr
    return tensors, dict(metadata)


_WRITE_DTYPES = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
}


def write(path, tensors, metadata=None, bf16_names=()):
    """Write `tensors` (name -> numpy array of a dtype in _WRITE_DTYPES) with string metadata.
    Tensors named in bf16_names are uint16 arrays of bfloat16 bit patterns, written as BF16."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        arr = np.array(tensors[name], order="C", copy=False)  # keeps 0-d shapes, unlike ascontiguousarray
        if name in bf16_names:
            if arr.dtype != np.uint16:
                raise SafetensorsError(f"{path}: tensor '{name}': BF16 bits must be uint16, are {arr.dtype}")
            raw = arr.astype("<u2", copy=False).tobytes()
            header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
            chunks.append(raw)
            offset += len(raw)
            continue
        if arr.dtype not in _WRITE_DTYPES:
            raise SafetensorsError(f"{path}: tensor '{name}': cannot write dtype {arr.dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _WRITE_DTYPES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # keep the data area 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for raw in chunks:
            f.write(raw)
