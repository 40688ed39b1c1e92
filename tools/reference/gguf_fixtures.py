#!/usr/bin/env python3
"""Reference fixtures for mosr-gguf, produced with llama.cpp's gguf-py (`pip install gguf numpy`).

Why: the Rust dequantisers must agree with ggml's block layouts. gguf-py's numpy
`gguf.quants.dequantize` is an independent implementation of those layouts, so the Rust tests
compare against values it produced rather than against numbers we derived ourselves.

Two jobs:

  synthetic (default)  Writes crates/gguf/tests/fixtures/quants.gguf with one small tensor per
                       ggml type (random block bytes whose f16 scale fields are set to finite
                       values with magnitude in [0.001, 0.1]), plus F32/F16/BF16/F64/I8/I16/I32
                       tensors and metadata of every GGUF value type; quants.ref.bin with gguf-py's
                       dequantised values (little-endian f32, tensors back to back); and
                       quants.json describing both.

  --real NAME=PATH     Writes crates/gguf/tests/fixtures/real_models.json with facts about real
                       model files (tensor table digest, metadata, and sha256 of the gguf-py
                       dequantisation of the smallest and largest tensor of each type).

Usage:
  python tools/reference/gguf_fixtures.py
  python tools/reference/gguf_fixtures.py --real smollm2=/path/SmolLM2-135M-Instruct.Q4_1.gguf \
      --real qwen05=/path/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

FIXTURES = Path(__file__).resolve().parents[2] / "crates" / "gguf" / "tests" / "fixtures"

# Byte offsets of the f16 scale fields inside one block, per type (ggml-common.h).
F16_FIELDS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
    Q.IQ4_NL: [0],
    Q.IQ4_XS: [0],
}


def random_blocks(rng: np.random.Generator, qtype: Q, n_blocks: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        mag = rng.uniform(0.001, 0.1, size=n_blocks)
        sign = rng.choice([-1.0, 1.0], size=n_blocks)
        raw[:, off:off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == Q.MXFP4:
        # E8M0 exponent byte: keep scales sane (2^-8..2^2), but cover the two subnormal codes.
        raw[:, 0] = rng.integers(120, 131, size=n_blocks, dtype=np.uint8)
        raw[0, 0] = 0
        raw[1, 0] = 1
    return raw


def f32_list(a: np.ndarray) -> list[float | None]:
    # float(np.float32) is exact in a double, and JSON keeps doubles exactly; JSON has no
    # inf/nan, so those become null (the .bin holds the exact values).
    return [float(x) if np.isfinite(x) else None for x in np.asarray(a, dtype=np.float32).ravel()]


def synthetic() -> None:
    rng = np.random.default_rng(20240607)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    gguf_path = FIXTURES / "quants.gguf"
    w = gguf.GGUFWriter(str(gguf_path), arch="mosr-test")

    # Metadata: one key per GGUF value type, plus arrays (strings, ints, floats, nested).
    meta: dict[str, dict] = {}

    def kv(key, value, vtype, sub_type=None, expect=None):
        w.add_key_value(key, value, vtype, sub_type)
        meta[key] = {"type": vtype.name, "value": value if expect is None else expect}

    V = gguf.GGUFValueType
    kv("test.u8", 200, V.UINT8)
    kv("test.i8", -100, V.INT8)
    kv("test.u16", 60000, V.UINT16)
    kv("test.i16", -30000, V.INT16)
    kv("test.u32", 4_000_000_000, V.UINT32)
    kv("test.i32", -2_000_000_000, V.INT32)
    kv("test.u64", 2**63 + 5, V.UINT64)
    kv("test.i64", -(2**62), V.INT64)
    kv("test.f32", 0.1, V.FLOAT32, expect=float(np.float32(0.1)))
    kv("test.f64", 0.1, V.FLOAT64)
    kv("test.bool_true", True, V.BOOL)
    kv("test.bool_false", False, V.BOOL)
    kv("test.string", "héllo ▁wörld \n\t 🦀", V.STRING)
    kv("test.small_u32", 7, V.UINT32)
    kv("test.neg_i32", -1, V.INT32)
    kv("test.str_array", ["<s>", "</s>", "▁the", "", "ĠHello", "\n"], V.ARRAY)
    kv("test.i32_array", [1, -2, 3, 6], V.ARRAY, sub_type=V.INT32)
    kv("test.f32_array", [0.0, -1.5, 3.25], V.ARRAY, sub_type=V.FLOAT32)
    kv("test.u64_array", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
    kv("test.nested", [[1, 2], [3]], V.ARRAY)

    tensors = []
    ref_chunks = []
    offset = 0

    def add(name: str, qtype: Q, raw: np.ndarray, ref: np.ndarray):
        nonlocal offset
        if raw.dtype == np.uint8 and qtype not in (Q.I8,):
            w.add_tensor(name, raw, raw_dtype=qtype)
        else:
            w.add_tensor(name, raw)
        ref = np.ascontiguousarray(ref, dtype=np.float32)
        tensors.append({
            "name": name,
            "type": qtype.name,
            "shape": list(ref.shape),
            "ref_offset": offset,
            "n": int(ref.size),
            "first": f32_list(ref.ravel()[:4]),
        })
        ref_chunks.append(ref.astype("<f4").tobytes())
        offset += ref.size

    quant_types = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
                   Q.IQ4_NL, Q.IQ4_XS, Q.MXFP4]
    for qtype in quant_types:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        # 2 rows; 2 blocks per row for 32-element blocks, 1 for 256-element super-blocks.
        per_row = 2 if block_size == 32 else 1
        raw = random_blocks(rng, qtype, 2 * per_row).reshape(2, per_row * type_size)
        ref = gguf.quants.dequantize(raw, qtype)
        assert ref.shape == (2, per_row * block_size), ref.shape
        add(f"q.{qtype.name.lower()}", qtype, raw, ref)

    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    add("plain.f32", Q.F32, f32, f32)

    f16 = rng.standard_normal((2, 8)).astype(np.float16)
    f16.ravel()[:6] = np.array([np.inf, -np.inf, 6e-8, -0.0, 65504.0, np.nan], dtype=np.float16)
    add("plain.f16", Q.F16, f16, gguf.quants.dequantize(f16.view(np.uint8), Q.F16).reshape(2, 8))

    bf16_src = (rng.standard_normal((4, 4)) * 100).astype(np.float32)
    bf16 = (bf16_src.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(4, 8)
    add("plain.bf16", Q.BF16, bf16, gguf.quants.dequantize(bf16, Q.BF16))

    f64 = rng.standard_normal((2, 3))
    add("plain.f64", Q.F64, f64, f64.astype(np.float32))
    i8 = rng.integers(-128, 128, size=(2, 4), dtype=np.int8)
    add("plain.i8", Q.I8, i8, i8.astype(np.float32))
    i16 = rng.integers(-32768, 32768, size=(5,), dtype=np.int16)
    add("plain.i16", Q.I16, i16, i16.astype(np.float32))
    i32 = np.array([0, -1, 2**24 + 1, -(2**31), 2**31 - 1], dtype=np.int32)
    add("plain.i32", Q.I32, i32, i32.astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    (FIXTURES / "quants.ref.bin").write_bytes(b"".join(ref_chunks))
    manifest = {
        "generator": f"tools/reference/gguf_fixtures.py with gguf-py {gguf_version()}",
        "gguf": "quants.gguf",
        "ref": "quants.ref.bin (little-endian f32, tensors back to back at ref_offset)",
        "architecture": "mosr-test",
        "metadata": meta,
        "tensors": tensors,
    }
    (FIXTURES / "quants.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {gguf_path} ({gguf_path.stat().st_size} bytes), "
          f"{len(tensors)} tensors, {offset} reference values")


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


def len_prefixed_sha(items: list[str]) -> str:
    """sha256 over the strings as GGUF stores them: u64 length, then UTF-8 bytes."""
    h = hashlib.sha256()
    for s in items:
        b = s.encode("utf-8")
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.hexdigest()


def real(specs: list[str]) -> None:
    out = {"generator": f"tools/reference/gguf_fixtures.py --real, gguf-py {gguf_version()}",
           "files": {}}
    for spec in specs:
        name, path = spec.split("=", 1)
        r = gguf.GGUFReader(path)
        tensors = list(r.tensors)
        table = "".join(
            f"{t.name}\t{t.tensor_type.name}\t{[int(d) for d in t.shape]}\t{int(t.data_offset)}\n"
            for t in tensors)
        counts: dict[str, int] = {}
        for t in tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1

        def field(key):
            return r.fields[key].contents()

        arch = field("general.architecture")
        tokens = field("tokenizer.ggml.tokens")
        merges = field("tokenizer.ggml.merges")
        token_type = np.array(field("tokenizer.ggml.token_type"), dtype="<i4")
        info = {
            "sha256_of_file": sha256_file(path),
            "version": int(field("GGUF.version")),
            "tensor_count": len(tensors),
            "metadata_count": len([k for k in r.fields if not k.startswith("GGUF.")]),
            "type_counts": dict(sorted(counts.items())),
            "tensor_table_sha256": hashlib.sha256(table.encode()).hexdigest(),
            "tensor_table_format": "name\\ttype\\t[ne0, ne1, ...]\\tabsolute_offset\\n per tensor",
            "architecture": arch,
            "u32": {k: int(field(k)) for k in [f"{arch}.block_count", f"{arch}.embedding_length",
                                               f"{arch}.context_length", "tokenizer.ggml.bos_token_id",
                                               "tokenizer.ggml.eos_token_id"]},
            "f32": {k: float(np.float32(field(k))) for k in [f"{arch}.rope.freq_base",
                                                           f"{arch}.attention.layer_norm_rms_epsilon"]},
            "str": {k: field(k) for k in ["tokenizer.ggml.model", "tokenizer.ggml.pre",
                                          "general.name"]},
            "tokens": {"count": len(tokens), "first": tokens[:5], "last": tokens[-3:],
                       "sha256": len_prefixed_sha(tokens)},
            "merges": {"count": len(merges), "first": merges[:3], "sha256": len_prefixed_sha(merges)},
            "token_type": {"count": int(token_type.size),
                           "sha256_i32": hashlib.sha256(token_type.tobytes()).hexdigest()},
            "tensors": [],
        }
        by_type: dict[str, list] = {}
        for t in tensors:
            by_type.setdefault(t.tensor_type.name, []).append(t)
        for tname, ts in sorted(by_type.items()):
            ts = sorted(ts, key=lambda t: (int(t.n_elements), t.name))
            picks = [ts[0]] if len(ts) == 1 else [ts[0], ts[-1]]
            for t in picks:
                vals = gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
                flat = np.ascontiguousarray(vals).ravel()
                info["tensors"].append({
                    "name": t.name,
                    "type": tname,
                    "shape": [int(d) for d in reversed(t.shape)],
                    "sha256_f32le": hashlib.sha256(flat.tobytes()).hexdigest(),
                    "sum": float(flat.astype(np.float64).sum()),
                    "first": f32_list(flat[:8]),
                    "last": f32_list(flat[-4:]),
                })
        out["files"][name] = info
        print(f"{name}: {counts}")
    path = FIXTURES / "real_models.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="append", default=[], metavar="NAME=PATH")
    args = ap.parse_args()
    if args.real:
        real(args.real)
    else:
        synthetic()
