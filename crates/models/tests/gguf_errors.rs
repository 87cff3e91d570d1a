//! Hand-made GGUF files, valid and hostile: the reader must parse the valid ones exactly and reject
//! the broken ones with an error naming the file and the field or tensor, never panicking.

use axbench_models::gguf::{GgufError, GgufFile, MetadataArray, MetadataValue};
use axbench_models::quant::GgmlType;
use half::f16;
use std::path::PathBuf;

/// A minimal GGUF writer: header, metadata, tensor directory, aligned data.
struct Writer {
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
    alignment: usize,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

impl Writer {
    fn new() -> Writer {
        Writer {
            version: 3,
            kv: vec![],
            n_kv: 0,
            infos: vec![],
            n_tensors: 0,
            data: vec![],
            alignment: 32,
        }
    }

    /// A raw KV: key, type id, already-encoded value bytes.
    fn kv_raw(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, 4, &v.to_le_bytes())
    }

    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = vec![];
        put_str(&mut b, v);
        self.kv_raw(key, 8, &b)
    }

    /// A tensor whose data is `bytes`, placed at the next aligned offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        while !self.data.len().is_multiple_of(self.alignment) {
            self.data.push(0);
        }
        let offset = self.data.len() as u64;
        self.tensor_info(name, dims, ty, offset);
        self.data.extend(bytes);
        self
    }

    fn tensor_info(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.infos);
        while !b.len().is_multiple_of(self.alignment) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

struct Tmp {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write(bytes: &[u8]) -> Tmp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand-made.gguf");
    std::fs::write(&path, bytes).unwrap();
    Tmp { _dir: dir, path }
}

fn open_err(bytes: &[u8]) -> (GgufError, String) {
    let t = write(bytes);
    let e = GgufFile::open(&t.path).expect_err("must be rejected");
    let msg = e.to_string();
    assert!(msg.contains("hand-made.gguf"), "error does not name the file: {msg}");
    (e, msg)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Two tensors (F32 [2,3] in ggml order, Q8_0 [32,2]) and metadata of every value type.
fn valid() -> Writer {
    let mut w = Writer::new();
    w.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_u32("llama.embedding_length", 3)
        .kv_u32("llama.feed_forward_length", 8)
        .kv_raw("llama.attention.head_count", 5, &1i32.to_le_bytes())
        .kv_raw("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
        .kv_raw("u8", 0, &[200])
        .kv_raw("i8", 1, &[0xff])
        .kv_raw("u16", 2, &65535u16.to_le_bytes())
        .kv_raw("i16", 3, &(-2i16).to_le_bytes())
        .kv_raw("bool", 7, &[1])
        .kv_raw("u64", 10, &u64::MAX.to_le_bytes())
        .kv_raw("i64", 11, &(-5i64).to_le_bytes())
        .kv_raw("f64", 12, &0.25f64.to_le_bytes());
    // array of 3 strings
    let mut a = vec![];
    a.extend(8u32.to_le_bytes());
    a.extend(3u64.to_le_bytes());
    for s in ["a", "ü", ""] {
        put_str(&mut a, s);
    }
    w.kv_raw("tokenizer.ggml.tokens", 9, &a);
    // array of arrays of i32: [[1, 2], []]
    let mut a = vec![];
    a.extend(9u32.to_le_bytes());
    a.extend(2u64.to_le_bytes());
    a.extend(5u32.to_le_bytes());
    a.extend(2u64.to_le_bytes());
    a.extend(1i32.to_le_bytes());
    a.extend(2i32.to_le_bytes());
    a.extend(5u32.to_le_bytes());
    a.extend(0u64.to_le_bytes());
    w.kv_raw("nested", 9, &a);

    w.tensor("f32", &[2, 3], 0, &f32_bytes(&[0., 1., 2., 3., 4., 5.]));
    let mut q = vec![];
    for row in 0..2 {
        q.extend(f16::from_f32(0.5 * (row + 1) as f32).to_le_bytes());
        q.extend((0..32).map(|j| (j as i8 - 16) as u8));
    }
    w.tensor("q8", &[32, 2], 8, &q);
    w
}

#[test]
fn valid_file_parses_exactly() {
    let t = write(&valid().bytes());
    let f = GgufFile::open(&t.path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata().len(), 16);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get("u8"), Some(&MetadataValue::U8(200)));
    assert_eq!(f.get("i8"), Some(&MetadataValue::I8(-1)));
    assert_eq!(f.get("u16"), Some(&MetadataValue::U16(65535)));
    assert_eq!(f.get("i16"), Some(&MetadataValue::I16(-2)));
    assert_eq!(f.get("u64"), Some(&MetadataValue::U64(u64::MAX)));
    assert_eq!(f.get("i64"), Some(&MetadataValue::I64(-5)));
    assert_eq!(f.get("f64"), Some(&MetadataValue::F64(0.25)));
    assert!(f.get_bool("bool").unwrap());
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap(), ["a", "ü", ""]);
    assert_eq!(
        f.get_array("nested").unwrap(),
        &MetadataArray::Array(vec![MetadataArray::I32(vec![1, 2]), MetadataArray::I32(vec![])])
    );
    let hp = f.hparams().unwrap();
    assert_eq!(
        (hp.block_count, hp.embedding_length, hp.head_count, hp.head_count_kv),
        (2, 3, 1, 1)
    );
    assert_eq!(hp.rope_freq_base, Some(10000.0));
    assert_eq!(hp.vocab_size, Some(3));
    assert_eq!(hp.sliding_window, None);

    // Torch order: ggml ne=[2,3] is [3,2].
    let info = f.tensor_info("f32").unwrap();
    assert_eq!(info.shape(), vec![3, 2]);
    assert_eq!(info.ggml_type, GgmlType::F32);
    let x = f.tensor("f32").unwrap();
    assert_eq!(x.size(), vec![3, 2]);
    assert_eq!(x.double_value(&[1, 0]), 2.0);
    assert_eq!(x.double_value(&[2, 1]), 5.0);
    let q = f.tensor("q8").unwrap();
    assert_eq!(q.size(), vec![2, 32]);
    assert_eq!(q.double_value(&[0, 0]), -8.0);
    assert_eq!(q.double_value(&[1, 31]), 15.0);
    assert_eq!(f.tensor_f32("q8").unwrap()[32 + 17], 1.0);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = valid().bytes();
    for len in 0..full.len() {
        let t = write(&full[..len]);
        let r = GgufFile::open(&t.path);
        let e = r.expect_err(&format!("prefix of {len} bytes accepted"));
        let msg = e.to_string();
        assert!(msg.contains("hand-made.gguf"), "{msg}");
        assert!(
            matches!(e, GgufError::Truncated { .. } | GgufError::BadTensor { .. }),
            "prefix {len}: unexpected error {msg}"
        );
    }
}

#[test]
fn byte_flips_never_panic() {
    let full = valid().bytes();
    let header_end = full.len() - valid().data.len();
    let mut x = 0x2545F491u32;
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = (x as usize) % header_end;
            b[i] ^= 1 << (x >> 29);
        }
        let t = write(&b);
        if let Ok(f) = GgufFile::open(&t.path) {
            for info in f.tensor_infos().to_vec() {
                let _ = f.tensor(&info.name);
            }
        }
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = valid().bytes();
    b[..4].copy_from_slice(b"GGML");
    let (e, msg) = open_err(&b);
    assert!(matches!(e, GgufError::BadMagic { .. }), "{msg}");
    assert!(msg.contains("not a GGUF file"), "{msg}");

    for (version, hint) in [(1u32, "version 1"), (4, ""), (3u32.swap_bytes(), "big-endian")] {
        let mut w = valid();
        w.version = version;
        let (e, msg) = open_err(&w.bytes());
        assert!(matches!(e, GgufError::UnsupportedVersion { .. }), "{msg}");
        assert!(msg.contains(hint), "{msg}");
    }
    let mut w = valid();
    w.version = 2;
    let t = write(&w.bytes());
    assert_eq!(GgufFile::open(&t.path).unwrap().version(), 2);
}

#[test]
fn tensor_past_end_of_file() {
    let mut w = valid();
    w.tensor_info("ghost", &[64, 64], 0, 4096);
    let (e, msg) = open_err(&w.bytes());
    assert!(
        matches!(e, GgufError::BadTensor { ref tensor, .. } if tensor == "ghost"),
        "{msg}"
    );
    assert!(msg.contains("past the end of the file"), "{msg}");

    // Offset so large that data_offset + offset overflows u64.
    let mut w = valid();
    w.tensor_info("far", &[32], 0, u64::MAX - 31);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`far`") && msg.contains("past the end"), "{msg}");
}

#[test]
fn dims_overflow_or_bad() {
    let mut w = valid();
    w.tensor_info("huge", &[1 << 40, 1 << 40], 0, 0);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`huge`") && msg.contains("overflow"), "{msg}");

    // Product fits but the byte size does not fit the file.
    let mut w = valid();
    w.tensor_info("big", &[1 << 30, 1 << 20], 0, 0);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`big`") && msg.contains("past the end"), "{msg}");

    let mut w = valid();
    w.tensor_info("five", &[1, 1, 1, 1, 1], 0, 0);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`five`") && msg.contains("5 dimensions"), "{msg}");

    // Q8_0 rows must be whole 32-value blocks.
    let mut w = valid();
    w.tensor_info("ragged", &[31, 2], 8, 0);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`ragged`") && msg.contains("block size 32"), "{msg}");

    let mut w = valid();
    w.tensor_info("misaligned", &[4], 0, 8);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`misaligned`") && msg.contains("alignment"), "{msg}");

    let mut w = valid();
    w.tensor("f32", &[1], 0, &[0; 4]);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`f32`") && msg.contains("twice"), "{msg}");
}

#[test]
fn unsupported_quant_type() {
    let mut w = valid();
    // Q8_1 is a known layout without a dequantizer; 39 is not a ggml type we know.
    w.tensor("q81", &[256], 9, &[0u8; 288]);
    w.tensor("iq", &[256], 39, &[0u8; 64]);
    let t = write(&w.bytes());
    let f = GgufFile::open(&t.path).unwrap();
    for name in ["q81", "iq"] {
        let e = f.tensor(name).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, GgufError::UnsupportedType { .. }), "{msg}");
        assert!(
            msg.contains(&format!("`{name}`")) && msg.contains("hand-made.gguf"),
            "{msg}"
        );
    }
    // The other tensors still load.
    assert_eq!(f.tensor("f32").unwrap().size(), vec![3, 2]);
    let e = f.tensor("nope").unwrap_err();
    assert!(matches!(e, GgufError::TensorNotFound { .. }) && e.to_string().contains("`nope`"));
}

#[test]
fn metadata_lengths_beyond_the_file() {
    // Key string claiming u64::MAX bytes.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    b.extend(b"abc");
    let (e, msg) = open_err(&b);
    assert!(matches!(e, GgufError::Truncated { .. }), "{msg}");
    assert!(msg.contains("key of metadata entry #0"), "{msg}");

    // String value longer than the rest of the file.
    let mut w = Writer::new();
    let mut v = vec![];
    v.extend(1000u64.to_le_bytes());
    v.extend(b"short");
    w.kv_raw("general.name", 8, &v);
    let (_, msg) = open_err(&w.bytes());
    assert!(
        msg.contains("metadata `general.name`") && msg.contains("1000 bytes"),
        "{msg}"
    );

    // Array claiming 2^62 u32 elements: rejected before allocating anything.
    let mut w = Writer::new();
    let mut v = vec![];
    v.extend(4u32.to_le_bytes());
    v.extend((1u64 << 62).to_le_bytes());
    w.kv_raw("tokenizer.ggml.scores", 9, &v);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`tokenizer.ggml.scores`"), "{msg}");

    // 2^40 strings in an array: fails at the first missing one, without reserving 2^40 slots.
    let mut w = Writer::new();
    let mut v = vec![];
    v.extend(8u32.to_le_bytes());
    v.extend((1u64 << 40).to_le_bytes());
    put_str(&mut v, "x");
    w.kv_raw("tokenizer.ggml.tokens", 9, &v);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("of metadata array `tokenizer.ggml.tokens`"), "{msg}");

    // A huge tensor count with nothing behind it.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let (_, msg) = open_err(&b);
    assert!(msg.contains("name of tensor #0"), "{msg}");
}

#[test]
fn metadata_type_errors() {
    let mut w = Writer::new();
    w.kv_raw("weird", 13, &[0; 8]);
    let (_, msg) = open_err(&w.bytes());
    assert!(
        msg.contains("`weird`") && msg.contains("unknown value type 13"),
        "{msg}"
    );

    let mut w = Writer::new();
    w.kv_raw("flag", 7, &[2]);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`flag`"), "{msg}");

    let mut w = Writer::new();
    w.kv_raw("bad_utf8", 8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`bad_utf8`") && msg.contains("UTF-8"), "{msg}");

    let mut w = Writer::new();
    w.kv_u32("dup", 1).kv_u32("dup", 2);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("`dup`") && msg.contains("twice"), "{msg}");

    let mut w = Writer::new();
    w.kv_u32("general.alignment", 3);
    let (_, msg) = open_err(&w.bytes());
    assert!(msg.contains("general.alignment"), "{msg}");

    // Wrong-type and missing-key getters.
    let t = write(&valid().bytes());
    let f = GgufFile::open(&t.path).unwrap();
    let msg = f.get_u32("general.architecture").unwrap_err().to_string();
    assert!(msg.contains("`general.architecture` is string"), "{msg}");
    let msg = f.get_str("missing.key").unwrap_err().to_string();
    assert!(msg.contains("`missing.key` is missing"), "{msg}");
    assert!(f.get_u32("u64").is_err()); // u64::MAX does not fit u32
    assert_eq!(f.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(f.opt_u32("missing").unwrap(), None);
}

#[test]
fn custom_alignment_is_respected() {
    let mut w = Writer::new();
    w.alignment = 64;
    w.kv_u32("general.alignment", 64);
    w.tensor("a", &[3], 0, &f32_bytes(&[1., 2., 3.]));
    w.tensor("b", &[2], 0, &f32_bytes(&[4., 5.]));
    let t = write(&w.bytes());
    let f = GgufFile::open(&t.path).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_info("b").unwrap().offset, 64);
    assert_eq!(f.tensor_f32("b").unwrap(), vec![4., 5.]);
}

#[test]
fn empty_and_missing_files() {
    let (e, msg) = open_err(&[]);
    assert!(matches!(e, GgufError::Truncated { .. }), "{msg}");
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/dir/model.gguf"));
}
