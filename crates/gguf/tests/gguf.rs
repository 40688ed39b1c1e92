//! mosr-gguf tests. Reference values come from gguf-py (llama.cpp's Python package) via
//! `tools/reference/gguf_fixtures.py`; see that script for how the fixtures were made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mosr_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, dequantize};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("quants.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("quants.gguf")).unwrap()
}

fn reference_values() -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("quants.ref.bin")).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A fresh path under the system temp dir (no tempfile crate: keep dev-deps lean).
fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mosr-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Asserts bit equality, treating any NaN as equal to any NaN.
fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(
            same,
            "{name}[{i}]: got {g:e} ({:#010x}), gguf-py {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

fn meta_to_json(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => (*x).into(),
        MetaValue::I8(x) => (*x).into(),
        MetaValue::U16(x) => (*x).into(),
        MetaValue::I16(x) => (*x).into(),
        MetaValue::U32(x) => (*x).into(),
        MetaValue::I32(x) => (*x).into(),
        MetaValue::U64(x) => (*x).into(),
        MetaValue::I64(x) => (*x).into(),
        MetaValue::F32(x) => f64::from(*x).into(),
        MetaValue::F64(x) => (*x).into(),
        MetaValue::Bool(x) => (*x).into(),
        MetaValue::String(s) => s.clone().into(),
        MetaValue::Array(items) => items.iter().map(meta_to_json).collect(),
    }
}

fn gguf_py_type_name(v: &MetaValue) -> &'static str {
    match v {
        MetaValue::U8(_) => "UINT8",
        MetaValue::I8(_) => "INT8",
        MetaValue::U16(_) => "UINT16",
        MetaValue::I16(_) => "INT16",
        MetaValue::U32(_) => "UINT32",
        MetaValue::I32(_) => "INT32",
        MetaValue::U64(_) => "UINT64",
        MetaValue::I64(_) => "INT64",
        MetaValue::F32(_) => "FLOAT32",
        MetaValue::F64(_) => "FLOAT64",
        MetaValue::Bool(_) => "BOOL",
        MetaValue::String(_) => "STRING",
        MetaValue::Array(_) => "ARRAY",
    }
}

// ---- gguf-py fixtures --------------------------------------------------------------------------

#[test]
fn fixture_metadata_matches_gguf_py() {
    let path = fixtures().join("quants.gguf");
    let f = GgufFile::open(&path).unwrap();
    let m = manifest();
    assert_eq!(f.version(), 3);
    assert_eq!(f.path(), path);
    assert_eq!(
        f.architecture().unwrap(),
        m["architecture"].as_str().unwrap()
    );
    let expected = m["metadata"].as_object().unwrap();
    assert!(expected.len() >= 20, "manifest lists too few keys");
    // gguf-py adds general.architecture itself; everything else must be in the manifest.
    assert_eq!(f.metadata().len(), expected.len() + 1);
    for (key, want) in expected {
        let got = f.meta(key).unwrap_or_else(|| panic!("missing {key}"));
        assert_eq!(
            gguf_py_type_name(got),
            want["type"].as_str().unwrap(),
            "{key}: type"
        );
        assert_eq!(meta_to_json(got), want["value"], "{key}: value");
    }
    // Nested arrays keep their structure and inner types.
    let nested = f.meta("test.nested").unwrap().as_array().unwrap();
    assert_eq!(
        nested[0],
        MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)])
    );
}

#[test]
fn fixture_tensors_match_gguf_py_bit_exact() {
    let f = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let refs = reference_values();
    let m = manifest();
    let tensors = m["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    let mut types = BTreeSet::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let info = f.tensor_info(name).unwrap();
        assert_eq!(
            info.ggml_type.name(),
            t["type"].as_str().unwrap(),
            "{name}: type"
        );
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        assert_eq!(info.shape(), shape, "{name}: shape");
        let (off, n) = (
            t["ref_offset"].as_u64().unwrap() as usize,
            t["n"].as_u64().unwrap() as usize,
        );
        assert_eq!(info.n_elements(), n);
        assert_eq!(f.tensor_bytes(name).unwrap().len(), info.n_bytes());
        let got = f.dequantize(name).unwrap();
        assert_bits_eq(name, &got, &refs[off..off + n]);
        // Values are not trivially zero: the comparison means something.
        assert!(
            got.iter().filter(|v| **v != 0.0).count() > n / 2,
            "{name}: mostly zeros"
        );
        types.insert(info.ggml_type);
    }
    use GgmlType::*;
    for required in [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
    ] {
        assert!(types.contains(&required), "fixture lacks {required}");
    }
    assert_eq!(
        refs.len(),
        tensors
            .iter()
            .map(|t| t["n"].as_u64().unwrap() as usize)
            .sum::<usize>()
    );
}

#[test]
fn block_affine_splits_q4_1_and_q5_1_exactly() {
    let f = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let mut split = BTreeSet::new();
    for info in f.tensors() {
        let full = f.dequantize(&info.name).unwrap();
        match f.block_affine(&info.name).unwrap() {
            Some(a) => {
                assert!(matches!(info.ggml_type, GgmlType::Q4_1 | GgmlType::Q5_1));
                assert_eq!(a.scaled.len(), full.len(), "{}", info.name);
                assert_eq!(a.offsets.len(), full.len() / 32, "{}", info.name);
                let joined: Vec<f32> = (0..full.len())
                    .map(|i| a.scaled[i] + a.offsets[i / 32])
                    .collect();
                assert_bits_eq(&info.name, &joined, &full);
                // The offsets are not all zero, so the split is not the identity.
                assert!(a.offsets.iter().any(|m| *m != 0.0), "{}", info.name);
                split.insert(info.ggml_type);
            }
            None => assert!(
                !matches!(info.ggml_type, GgmlType::Q4_1 | GgmlType::Q5_1),
                "{}: {} has block offsets",
                info.name,
                info.ggml_type
            ),
        }
    }
    assert_eq!(split.len(), 2, "the fixture has Q4_1 and Q5_1 tensors");
}

#[test]
fn dequantize_rows_matches_full_tensor() {
    let f = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    for info in f.tensors() {
        let full = f.dequantize(&info.name).unwrap();
        let row = info.row_len();
        for r in 0..info.n_rows() {
            let got = f.dequantize_rows(&info.name, r, 1).unwrap();
            assert_bits_eq(&info.name, &got, &full[r * row..(r + 1) * row]);
        }
        let err = f.dequantize_rows(&info.name, info.n_rows(), 1).unwrap_err();
        assert!(matches!(err, GgufError::ShapeMismatch { .. }), "{err}");
    }
}

#[test]
fn typed_getters_convert_only_what_fits() {
    let path = fixtures().join("quants.gguf");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_u32("test.u8").unwrap(), 200);
    assert_eq!(f.get_u32("test.u16").unwrap(), 60000);
    assert_eq!(f.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u32("test.small_u32").unwrap(), 7);
    assert_eq!(f.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(f.get_i64("test.i64").unwrap(), -(1 << 62));
    assert_eq!(f.get_i64("test.i8").unwrap(), -100);
    assert_eq!(f.get_f32("test.f32").unwrap(), 0.1f32);
    assert_eq!(f.get_f32("test.f64").unwrap(), 0.1f32);
    assert_eq!(f.get_f64("test.f64").unwrap(), 0.1f64);
    assert!(f.get_bool("test.bool_true").unwrap());
    assert!(!f.get_bool("test.bool_false").unwrap());
    assert_eq!(f.get_str("test.string").unwrap(), "héllo ▁wörld \n\t 🦀");
    assert_eq!(
        f.get_str_array("test.str_array").unwrap(),
        ["<s>", "</s>", "▁the", "", "ĠHello", "\n"]
    );
    assert_eq!(f.get_i32_array("test.i32_array").unwrap(), [1, -2, 3, 6]);
    assert_eq!(
        f.get_f32_array("test.f32_array").unwrap(),
        [0.0, -1.5, 3.25]
    );
    assert_eq!(f.get_u32_opt("no.such.key").unwrap(), None);
    assert_eq!(f.get_str_opt("no.such.key").unwrap(), None);
    assert_eq!(f.get_u32_opt("test.u16").unwrap(), Some(60000));
    assert_eq!(f.arch_key("block_count").unwrap(), "mosr-test.block_count");

    let wrong = |r: Result<_, GgufError>, key: &str, found: &str| {
        let e = r.expect_err("should fail");
        let msg = e.to_string();
        match &e {
            GgufError::WrongType { key: k, file, .. } => {
                assert_eq!(k, key);
                assert_eq!(file, &path);
            }
            other => panic!("expected WrongType for {key}, got {other:?}"),
        }
        assert!(
            msg.contains(key) && msg.contains("quants.gguf") && msg.contains(found),
            "{msg}"
        );
    };
    wrong(f.get_u32("test.u64").map(drop), "test.u64", "out of range");
    wrong(f.get_u32("test.neg_i32").map(drop), "test.neg_i32", "-1");
    wrong(f.get_u32("test.string").map(drop), "test.string", "string");
    wrong(f.get_u32("test.f32").map(drop), "test.f32", "f32");
    wrong(f.get_f32("test.u32").map(drop), "test.u32", "u32");
    wrong(f.get_str("test.u32").map(drop), "test.u32", "u32");
    wrong(f.get_bool("test.u8").map(drop), "test.u8", "u8");
    wrong(
        f.get_str_array("test.i32_array").map(drop),
        "test.i32_array",
        "i32 at index 0",
    );
    wrong(
        f.get_str_array("test.string").map(drop),
        "test.string",
        "string",
    );
    wrong(
        f.get_u32_array("test.i32_array").map(drop),
        "test.i32_array",
        "index 1",
    );
    wrong(
        f.get_i32_array("test.u64_array").map(drop),
        "test.u64_array",
        "index 1",
    );
    wrong(
        f.get_f32_array("test.str_array").map(drop),
        "test.str_array",
        "string at index 0",
    );
    wrong(
        f.get_u32_opt("test.string").map(drop),
        "test.string",
        "string",
    );

    let e = f.get_u32("llama.block_count").unwrap_err();
    assert!(matches!(&e, GgufError::MissingKey { key, .. } if key == "llama.block_count"));
    assert!(e.to_string().contains("quants.gguf"), "{e}");
}

// ---- writer round trip -------------------------------------------------------------------------

fn sample_writer(version: u32) -> GgufWriter {
    let mut w = GgufWriter::new().with_version(version);
    w.add_metadata("general.architecture", "llama")
        .add_metadata("llama.block_count", 2u32)
        .add_metadata("llama.rope.freq_base", 10000.0f32)
        .add_metadata("a.u8", 1u8)
        .add_metadata("a.i8", -1i8)
        .add_metadata("a.u16", 2u16)
        .add_metadata("a.i16", -2i16)
        .add_metadata("a.i32", -3i32)
        .add_metadata("a.u64", u64::MAX)
        .add_metadata("a.i64", i64::MIN)
        .add_metadata("a.f64", 1e300)
        .add_metadata("a.bool", true)
        .add_metadata("tokenizer.ggml.tokens", vec!["a", "b", "ü"])
        .add_metadata("tokenizer.ggml.scores", vec![0.5f32, -1.0, 2.0])
        .add_metadata("tokenizer.ggml.token_type", vec![1i32, 3, 6])
        .add_metadata("a.empty", MetaValue::Array(vec![]));
    w.add_tensor_f32("w.f32", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5])
        .unwrap();
    w.add_tensor_f16("w.f16", &[4], &[0.5, -0.25, 65504.0, 1.0 / 3.0])
        .unwrap();
    // One Q8_0 block: d = 0.5 (f16 0x3800), q = -16..16.
    let mut q8 = vec![0x00, 0x38];
    q8.extend((0..32).map(|i| (i - 16i8) as u8));
    w.add_tensor_raw("w.q8", GgmlType::Q8_0, &[1, 32], q8)
        .unwrap();
    w
}

#[test]
fn writer_round_trip_v2_v3_file_and_memory() {
    for version in [2, 3] {
        let w = sample_writer(version);
        let path = temp_path(&format!("roundtrip-v{version}.gguf"));
        w.write(&path).unwrap();
        let from_file = GgufFile::open(&path).unwrap();
        let from_mem = GgufFile::from_bytes(w.to_bytes().unwrap(), "mem.gguf").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes().unwrap());
        for f in [&from_file, &from_mem] {
            assert_eq!(f.version(), version);
            assert_eq!(f.architecture().unwrap(), "llama");
            assert_eq!(f.get_u32(&f.arch_key("block_count").unwrap()).unwrap(), 2);
            assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
            assert_eq!(f.meta("a.u8"), Some(&MetaValue::U8(1)));
            assert_eq!(f.meta("a.i8"), Some(&MetaValue::I8(-1)));
            assert_eq!(f.meta("a.u16"), Some(&MetaValue::U16(2)));
            assert_eq!(f.meta("a.i16"), Some(&MetaValue::I16(-2)));
            assert_eq!(f.meta("a.i32"), Some(&MetaValue::I32(-3)));
            assert_eq!(f.get_u64("a.u64").unwrap(), u64::MAX);
            assert_eq!(f.get_i64("a.i64").unwrap(), i64::MIN);
            assert_eq!(f.get_f64("a.f64").unwrap(), 1e300);
            assert_eq!(f.get_f32("a.f64").unwrap(), f32::INFINITY);
            assert!(f.get_bool("a.bool").unwrap());
            assert_eq!(
                f.get_str_array("tokenizer.ggml.tokens").unwrap(),
                ["a", "b", "ü"]
            );
            assert_eq!(
                f.get_f32_array("tokenizer.ggml.scores").unwrap(),
                [0.5, -1.0, 2.0]
            );
            assert_eq!(
                f.get_i32_array("tokenizer.ggml.token_type").unwrap(),
                [1, 3, 6]
            );
            assert_eq!(f.get_str_array("a.empty").unwrap(), Vec::<&str>::new());
            assert_eq!(f.metadata().len(), 16);

            let t = f.tensor_info("w.f32").unwrap();
            assert_eq!((t.dims.clone(), t.shape()), (vec![3, 2], vec![2, 3]));
            assert_eq!((t.row_len(), t.n_rows(), t.n_bytes()), (3, 2, 24));
            assert_eq!(
                f.dequantize("w.f32").unwrap(),
                [1.0, 2.0, 3.0, 4.0, 5.0, -6.5]
            );
            assert_eq!(f.dequantize_rows("w.f32", 1, 1).unwrap(), [4.0, 5.0, -6.5]);
            let h = f.dequantize("w.f16").unwrap();
            assert_eq!(&h[..3], [0.5, -0.25, 65504.0]);
            assert_eq!(h[3], half::f16::from_f32(1.0 / 3.0).to_f32());
            let q = f.dequantize("w.q8").unwrap();
            assert_eq!(
                q,
                (0..32).map(|i| (i - 16) as f32 * 0.5).collect::<Vec<_>>()
            );
            for t in f.tensors() {
                assert_eq!(t.offset % 32, 0);
            }
            assert_eq!(f.data_offset() % 32, 0);
        }
    }
}

#[test]
fn writer_respects_custom_alignment() {
    let mut w = sample_writer(3);
    w.set_alignment(64);
    let f = GgufFile::from_bytes(w.to_bytes().unwrap(), "a64.gguf").unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(
        f.tensors()[1].offset,
        64,
        "24 bytes of w.f32 are padded to 64"
    );
    assert_eq!(f.dequantize("w.q8").unwrap()[31], 7.5);

    w.set_alignment(48);
    let e = w.to_bytes().unwrap_err();
    assert!(matches!(e, GgufError::Invalid { .. }), "{e}");
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let mut w = GgufWriter::new();
    let e = w.add_tensor_f32("x", &[2, 2], &[1.0; 3]).err().unwrap();
    assert!(
        matches!(&e, GgufError::ShapeMismatch { tensor, .. } if tensor == "x"),
        "{e}"
    );
    let e = w
        .add_tensor_raw("q", GgmlType::Q4_0, &[2, 16], vec![0; 36])
        .err()
        .unwrap();
    assert!(e.to_string().contains("block size"), "{e}");
    let e = w
        .add_tensor_raw("q", GgmlType::Q4_0, &[1, 32], vec![0; 17])
        .err()
        .unwrap();
    assert!(e.to_string().contains("needs Some(18) bytes"), "{e}");
    w.add_tensor_f32("x", &[1], &[1.0]).unwrap();
    let e = w.add_tensor_f32("x", &[1], &[1.0]).err().unwrap();
    assert!(matches!(e, GgufError::Invalid { .. }));
    w.add_metadata(
        "mixed",
        MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
    );
    let e = w.to_bytes().unwrap_err();
    assert!(
        e.to_string().contains("mixed") && e.to_string().contains("share one type"),
        "{e}"
    );
}

// ---- bad input ---------------------------------------------------------------------------------

/// Byte offset of tensor `name`'s type code within a GGUF image with one-dimension-count
/// layout as written by GgufWriter (name, n_dims, dims, type, offset).
fn type_code_offset(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    at + needle.len() + 4 + 8 * n_dims
}

#[test]
fn every_truncation_is_reported_as_truncated_with_the_file_name() {
    let bytes = fixture_bytes();
    let full = GgufFile::from_bytes(bytes.clone(), "full.gguf").unwrap();
    let data_end = full
        .tensors()
        .iter()
        .map(|t| full.data_offset() as usize + t.offset as usize + t.n_bytes())
        .max()
        .unwrap();
    let mut whats = BTreeSet::new();
    for cut in 0..data_end {
        let e = GgufFile::from_bytes(bytes[..cut].to_vec(), "cut.gguf").unwrap_err();
        let GgufError::Truncated { what, offset, file } = &e else {
            panic!("cut at {cut}: expected Truncated, got {e:?}");
        };
        assert_eq!(file, Path::new("cut.gguf"));
        assert!(e.to_string().starts_with("cut.gguf: "), "{e}");
        assert!(
            *offset as usize <= cut || what.contains("data of tensor"),
            "cut {cut}: {e}"
        );
        let kind = if cut < 4 {
            "magic"
        } else if cut < 24 {
            "header"
        } else if what.contains("metadata") {
            "metadata"
        } else if what.contains("data of tensor") {
            "data"
        } else {
            "tensor info"
        };
        if cut == 3 {
            assert!(what.contains("magic"), "{what}");
        }
        if cut == 10 {
            assert!(what.contains("tensor count"), "{what}");
        }
        if cut >= full.data_offset() as usize {
            assert_eq!(kind, "data", "cut {cut}: {what}");
        }
        whats.insert(kind);
    }
    assert_eq!(
        whats,
        BTreeSet::from(["magic", "header", "metadata", "tensor info", "data"]),
        "every region of the file was cut"
    );
    // The final tensor's alignment padding is not needed.
    assert!(GgufFile::from_bytes(bytes[..data_end].to_vec(), "x").is_ok());

    // Through the filesystem (mmap path, and the empty-file special case).
    for cut in [0, 100, bytes.len() - 40] {
        let path = temp_path(&format!("truncated-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = GgufFile::open(&path).unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = fixture_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let e = GgufFile::from_bytes(bytes.clone(), "bad.gguf").unwrap_err();
    assert!(
        matches!(e, GgufError::BadMagic { found, .. } if &found == b"GGML"),
        "{e}"
    );
    assert!(e.to_string().contains("bad.gguf"));

    let mut bytes = fixture_bytes();
    for (version, what) in [(1u32, "1"), (4, "4"), (3u32.swap_bytes(), "big-endian")] {
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let e = GgufFile::from_bytes(bytes.clone(), "v.gguf").unwrap_err();
        assert!(matches!(e, GgufError::UnsupportedVersion { version: v, .. } if v == version));
        assert!(
            e.to_string().contains("v.gguf") && e.to_string().contains(what),
            "{e}"
        );
    }

    let e = GgufFile::open(Path::new("/nonexistent/dir/model.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { op: "open", .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/dir/model.gguf"));
}

#[test]
fn unknown_ggml_type_names_tensor_and_file() {
    let mut w = GgufWriter::new();
    w.add_tensor_f32("blk.0.w", &[2, 3], &[0.0; 6]).unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let at = type_code_offset(&bytes, "blk.0.w", 2);
    assert_eq!(
        bytes[at..at + 4],
        0u32.to_le_bytes(),
        "found the F32 type code"
    );
    // 4 (Q4_2) was removed from ggml; 1000 was never assigned.
    for code in [4u32, 32, 1000] {
        bytes[at..at + 4].copy_from_slice(&code.to_le_bytes());
        let e = GgufFile::from_bytes(bytes.clone(), "types.gguf").unwrap_err();
        match &e {
            GgufError::UnknownType {
                code: c,
                tensor,
                file,
            } => {
                assert_eq!(
                    (*c, tensor.as_str(), file.as_path()),
                    (code, "blk.0.w", Path::new("types.gguf"))
                );
            }
            other => panic!("expected UnknownType, got {other:?}"),
        }
        assert!(e.to_string().contains("types.gguf") && e.to_string().contains("blk.0.w"));
    }
    assert!(GgmlType::from_u32(1000, "t", Path::new("f")).is_err());
    assert_eq!(
        GgmlType::from_u32(12, "t", Path::new("f")).unwrap(),
        GgmlType::Q4_K
    );
}

#[test]
fn missing_tensor_and_unsupported_type() {
    let mut w = GgufWriter::new();
    w.add_tensor_raw("iq2", GgmlType::IQ2_XXS, &[256], vec![0; 66])
        .unwrap();
    let f = GgufFile::from_bytes(w.to_bytes().unwrap(), "m.gguf").unwrap();

    let e = f.dequantize("nope").unwrap_err();
    assert!(
        matches!(&e, GgufError::MissingTensor { tensor, .. } if tensor == "nope"),
        "{e}"
    );
    assert!(e.to_string().contains("m.gguf") && e.to_string().contains("'nope'"));
    assert!(f.tensor_bytes("nope").is_err() && f.tensor_info("nope").is_err());

    assert_eq!(f.tensor_bytes("iq2").unwrap().len(), 66);
    let e = f.dequantize("iq2").unwrap_err();
    assert!(
        matches!(&e, GgufError::UnsupportedType { ty: GgmlType::IQ2_XXS, tensor, .. } if tensor == "iq2"),
        "{e}"
    );
    assert!(e.to_string().contains("m.gguf") && e.to_string().contains("IQ2_XXS"));
}

#[test]
fn structural_problems_are_invalid() {
    let invalid = |bytes: Vec<u8>, needle: &str| {
        let e = GgufFile::from_bytes(bytes, "inv.gguf").unwrap_err();
        assert!(matches!(e, GgufError::Invalid { .. }), "{needle}: {e:?}");
        assert!(
            e.to_string().contains("inv.gguf") && e.to_string().contains(needle),
            "{e}"
        );
    };

    // Alignment that is not a power of two (written by hand: the writer refuses it).
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", 32u32);
    w.add_tensor_f32("t", &[1], &[1.0]).unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let key = b"general.alignment";
    let at = bytes.windows(key.len()).position(|x| x == key).unwrap() + key.len() + 4;
    bytes[at..at + 4].copy_from_slice(&48u32.to_le_bytes());
    invalid(bytes, "power of two");

    // Too many dimensions.
    let mut w = GgufWriter::new();
    w.add_tensor_f32("t", &[1, 1, 1, 1], &[1.0]).unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let at = type_code_offset(&bytes, "t", 4) - 4 - 8 * 4;
    bytes[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    invalid(bytes, "5 dimensions");

    // Row length not a whole number of blocks (Q8_0 row of 32 patched to 33).
    let mut w = GgufWriter::new();
    w.add_tensor_raw("q", GgmlType::Q8_0, &[32], vec![0; 34])
        .unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let at = type_code_offset(&bytes, "q", 1) - 8;
    bytes[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
    invalid(bytes, "block size");

    // Misaligned tensor offset.
    let mut w = GgufWriter::new();
    w.add_tensor_f32("t", &[1], &[1.0]).unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let at = type_code_offset(&bytes, "t", 1) + 4;
    bytes[at..at + 8].copy_from_slice(&4u64.to_le_bytes());
    invalid(bytes, "not a multiple of the alignment");

    // Duplicate tensor names and metadata keys (patch the second name's last letter).
    let mut w = GgufWriter::new();
    w.add_metadata("k1", 1u8).add_metadata("k2", 2u8);
    w.add_tensor_f32("t1", &[1], &[1.0]).unwrap();
    w.add_tensor_f32("t2", &[1], &[1.0]).unwrap();
    let bytes = w.to_bytes().unwrap();
    let mut dup_t = bytes.clone();
    let at = dup_t.windows(2).position(|x| x == b"t2").unwrap();
    dup_t[at + 1] = b'1';
    invalid(dup_t, "duplicate tensor name 't1'");
    let mut dup_k = bytes.clone();
    let at = dup_k.windows(2).position(|x| x == b"k2").unwrap();
    dup_k[at + 1] = b'1';
    invalid(dup_k, "duplicate metadata key 'k1'");

    // Bool that is neither 0 nor 1, invalid UTF-8, unknown value type.
    let mut w = GgufWriter::new();
    w.add_metadata("flag", true).add_metadata("name", "abc");
    let bytes = w.to_bytes().unwrap();
    let mut bad_bool = bytes.clone();
    let at = bad_bool.windows(4).position(|x| x == b"flag").unwrap() + 4 + 4;
    bad_bool[at] = 2;
    invalid(bad_bool, "bool byte is 2");
    let mut bad_utf8 = bytes.clone();
    let at = bad_utf8.windows(3).position(|x| x == b"abc").unwrap();
    bad_utf8[at + 1] = 0xFF;
    invalid(bad_utf8, "UTF-8");
    let mut bad_vt = bytes;
    let at = bad_vt.windows(4).position(|x| x == b"flag").unwrap() + 4;
    bad_vt[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
    invalid(bad_vt, "unknown value type 13");
}

#[test]
fn hostile_counts_do_not_allocate_or_panic() {
    // Huge tensor/metadata counts and a huge string length in a tiny file.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes()); // key length
    let e = GgufFile::from_bytes(bytes, "h.gguf").unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("key of metadata entry 0")),
        "{e}"
    );

    let mut w = GgufWriter::new();
    w.add_metadata("arr", vec![1u32, 2]);
    let mut bytes = w.to_bytes().unwrap();
    let at = bytes.windows(3).position(|x| x == b"arr").unwrap() + 3 + 4 + 4;
    bytes[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = GgufFile::from_bytes(bytes, "h.gguf").unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("of metadata array 'arr'")),
        "{e}"
    );
}

// ---- dequantisation details --------------------------------------------------------------------

#[test]
fn free_dequantize_checks_sizes() {
    let mut out = vec![0f32; 32];
    let e = dequantize(GgmlType::Q4_0, &[0; 17], 32, &mut out).unwrap_err();
    assert!(
        matches!(e, GgufError::ShapeMismatch { .. }) && e.to_string().contains("18 bytes"),
        "{e}"
    );
    let e = dequantize(GgmlType::Q4_0, &[0; 18], 31, &mut out[..31]).unwrap_err();
    assert!(e.to_string().contains("whole number"), "{e}");
    let e = dequantize(GgmlType::Q4_0, &[0; 18], 32, &mut out[..16]).unwrap_err();
    assert!(e.to_string().contains("output buffer"), "{e}");
    let e = dequantize(GgmlType::TQ1_0, &[0; 54], 256, &mut vec![0.0; 256]).unwrap_err();
    assert!(matches!(
        e,
        GgufError::UnsupportedType {
            ty: GgmlType::TQ1_0,
            ..
        }
    ));
    assert_eq!(e.file(), Path::new(mosr_gguf::IN_MEMORY));
}

#[test]
fn q8_k_by_hand() {
    // Not covered by gguf-py (it has no Q8_K dequantiser): d * q, bsums ignored.
    let mut b = 0.25f32.to_le_bytes().to_vec();
    b.extend((0..256).map(|i: i32| (i - 128) as i8 as u8));
    b.extend([0xAB; 32]);
    let mut out = vec![0f32; 256];
    dequantize(GgmlType::Q8_K, &b, 256, &mut out).unwrap();
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, (i as f32 - 128.0) * 0.25);
    }
}

#[test]
fn q4_k_scale_packing_by_hand() {
    // Independent of gguf-py: check get_scale_min_k4's 6-bit packing for sub-blocks 1 and 5.
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes()); // d
    b[2..4].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes()); // dmin
    let s = &mut b[4..16];
    s[1] = 0b11_000011; // sc1 = 3, top bits 3 -> high bits of sc5
    s[5] = 0b01_000100; // m1 = 4, top bits 1 -> high bits of m5
    s[9] = 0x2_7; // low nibble: sc5 low = 7, high nibble: m5 low = 2
    // qs: sub-block 1 is the high nibbles of qs[0..32]; sub-block 5 the high nibbles of qs[64..96].
    for q in &mut b[16..144] {
        *q = 0x90; // low nibble 0, high nibble 9
    }
    let mut out = vec![0f32; 256];
    dequantize(GgmlType::Q4_K, &b, 256, &mut out).unwrap();
    let (sc1, m1) = (3.0, 4.0);
    let (sc5, m5) = ((7 | (3 << 4)) as f32, (2 | (1 << 4)) as f32);
    assert_eq!(out[32], sc1 * 9.0 - 0.5 * m1);
    assert_eq!(out[5 * 32 + 7], sc5 * 9.0 - 0.5 * m5);
    assert_eq!(out[0], 0.0, "sub-block 0: scale 0, min 0");
}

#[test]
fn type_table_is_consistent() {
    for t in GgmlType::ALL {
        assert_eq!(GgmlType::from_code(t.code()), Some(t));
        assert_eq!(GgmlType::from_name(t.name()), Some(t));
        assert_eq!(t.to_string(), t.name());
        assert!(t.type_size() > 0 && t.block_size() > 0);
    }
    assert_eq!(GgmlType::Q4_K.type_size(), 144);
    assert_eq!(GgmlType::Q6_K.type_size(), 210);
    assert_eq!(GgmlType::Q5_K.type_size(), 176);
    assert_eq!(GgmlType::Q3_K.type_size(), 110);
    assert_eq!(GgmlType::Q2_K.type_size(), 84);
    assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
    assert_eq!(GgmlType::Q8_0.bytes_for(63), None);
}

/// This thread's CPU time in seconds (Linux), so benchmark numbers survive a busy machine.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

/// Crude single-core dequantisation throughput per type: 8M values written into a reused
/// buffer (so page faults are excluded), timed by thread CPU time where available. Run with
/// `cargo test -p mosr-gguf --release -- --ignored --nocapture throughput`.
#[test]
#[ignore = "benchmark"]
fn throughput() {
    use GgmlType::*;
    let n = 8 << 20; // values
    let mut out = vec![0f32; n];
    for ty in [
        F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
    ] {
        let mut bytes = vec![0u8; ty.bytes_for(n).unwrap()];
        let mut x = 0x1234_5678u32;
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        dequantize(ty, &bytes, n, &mut out).unwrap();
        let reps = 5;
        let (wall, cpu) = (Instant::now(), thread_cpu_seconds());
        for _ in 0..reps {
            dequantize(ty, &bytes, n, &mut out).unwrap();
        }
        let wall = wall.elapsed().as_secs_f64();
        let s = cpu
            .and_then(|c| Some(thread_cpu_seconds()? - c))
            .unwrap_or(wall)
            / reps as f64;
        println!(
            "{ty:>5}: {:6.0} MB/s encoded input, {:5.0} M values/s ({:.0}% CPU while timed)",
            bytes.len() as f64 / s / 1e6,
            n as f64 / s / 1e6,
            100.0 * s * reps as f64 / wall
        );
    }
}

// ---- real model files --------------------------------------------------------------------------

fn len_prefixed_sha(items: &[&str]) -> String {
    let mut h = Sha256::new();
    for s in items {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_real_file(env: &str, key: &str) {
    let Ok(path) = std::env::var(env) else {
        println!("note: {env} not set; skipping the {key} real-file check");
        return;
    };
    let text = std::fs::read_to_string(fixtures().join("real_models.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let want = &all["files"][key];
    let t0 = Instant::now();
    let f = GgufFile::open(Path::new(&path)).unwrap();
    println!(
        "{key}: opened {path} in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );

    assert_eq!(f.version() as u64, want["version"].as_u64().unwrap());
    assert_eq!(
        f.tensors().len() as u64,
        want["tensor_count"].as_u64().unwrap()
    );
    assert_eq!(
        f.metadata().len() as u64,
        want["metadata_count"].as_u64().unwrap()
    );
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for t in f.tensors() {
        *counts.entry(t.ggml_type.name().to_owned()).or_default() += 1;
    }
    println!("{key}: tensor types {counts:?}");
    assert_eq!(serde_json::to_value(&counts).unwrap(), want["type_counts"]);
    let table: String = f
        .tensors()
        .iter()
        .map(|t| {
            let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
            format!(
                "{}\t{}\t[{}]\t{}\n",
                t.name,
                t.ggml_type,
                dims.join(", "),
                f.data_offset() + t.offset
            )
        })
        .collect();
    assert_eq!(
        hex(&Sha256::digest(table.as_bytes())),
        want["tensor_table_sha256"]
    );

    assert_eq!(f.architecture().unwrap(), want["architecture"]);
    for (k, v) in want["u32"].as_object().unwrap() {
        assert_eq!(f.get_u32(k).unwrap() as u64, v.as_u64().unwrap(), "{k}");
    }
    for (k, v) in want["f32"].as_object().unwrap() {
        assert_eq!(f.get_f32(k).unwrap() as f64, v.as_f64().unwrap(), "{k}");
    }
    for (k, v) in want["str"].as_object().unwrap() {
        assert_eq!(f.get_str(k).unwrap(), v.as_str().unwrap(), "{k}");
    }
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(
        tokens.len() as u64,
        want["tokens"]["count"].as_u64().unwrap()
    );
    assert_eq!(
        serde_json::to_value(&tokens[..5]).unwrap(),
        want["tokens"]["first"]
    );
    assert_eq!(len_prefixed_sha(&tokens), want["tokens"]["sha256"]);
    let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(
        merges.len() as u64,
        want["merges"]["count"].as_u64().unwrap()
    );
    assert_eq!(len_prefixed_sha(&merges), want["merges"]["sha256"]);
    let tt = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let tt_bytes: Vec<u8> = tt.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        hex(&Sha256::digest(&tt_bytes)),
        want["token_type"]["sha256_i32"]
    );

    // Selected tensors: bit-exact against gguf-py (sha256 of the little-endian f32 values).
    let picks = want["tensors"].as_array().unwrap();
    let mut verified = BTreeSet::new();
    for p in picks {
        let name = p["name"].as_str().unwrap();
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type.name(), p["type"]);
        assert_eq!(serde_json::to_value(info.shape()).unwrap(), p["shape"]);
        let vals = f.dequantize(name).unwrap();
        let first: Vec<f32> = serde_json::from_value(p["first"].clone()).unwrap();
        assert_bits_eq(name, &vals[..first.len()], &first);
        let last: Vec<f32> = serde_json::from_value(p["last"].clone()).unwrap();
        assert_bits_eq(name, &vals[vals.len() - last.len()..], &last);
        let le: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            hex(&Sha256::digest(&le)),
            p["sha256_f32le"],
            "{name}: sha256 of values"
        );
        let sum: f64 = vals.iter().map(|&v| v as f64).sum();
        let want_sum = p["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-9 * want_sum.abs().max(1.0),
            "{name}: sum"
        );
        verified.insert(info.ggml_type);
    }
    let present: BTreeSet<GgmlType> = f.tensors().iter().map(|t| t.ggml_type).collect();
    assert_eq!(verified, present, "every type present was verified");
    println!("{key}: verified bit-exact against gguf-py: {verified:?}");

    // Every tensor dequantises to finite values; report throughput per type.
    let mut per_type = std::collections::BTreeMap::<GgmlType, (usize, f64)>::new();
    for t in f.tensors() {
        let start = Instant::now();
        let v = f.dequantize(&t.name).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{}: non-finite value",
            t.name
        );
        let e = per_type.entry(t.ggml_type).or_default();
        e.0 += t.n_bytes();
        e.1 += secs;
    }
    for (ty, (bytes, secs)) in per_type {
        println!(
            "{key}: {ty}: {:.0} MB encoded, {:.0} MB/s (incl. allocation)",
            bytes as f64 / 1e6,
            bytes as f64 / secs / 1e6
        );
    }
}

#[test]
fn real_smollm2_135m_q4_1() {
    check_real_file("MOSR_SMOLLM2_GGUF", "smollm2");
}

#[test]
fn real_qwen25_coder_05b_q4_k_m() {
    check_real_file("MOSR_QWEN05_GGUF", "qwen05");
}
