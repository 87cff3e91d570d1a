//! ggml tensor types and their dequantization to `f32`.
//!
//! The block layouts and arithmetic follow `ggml-common.h` / `ggml-quants.c` of llama.cpp (and
//! `gguf.quants` in the `gguf` Python package, which the golden tests compare against): every
//! quantized type stores `block_size` consecutive values of a row in `type_size` bytes, with one or
//! two `f16` scales per block (per sub-block for the k-quants).
//!
//! The functions here work on raw byte slices and never panic on short input: callers get a
//! [`QuantError`] instead.

use half::{bf16, f16};

/// A ggml tensor element type, numbered as in `enum ggml_type` (the value stored in GGUF files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ4_NL,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    /// A type id this crate knows by number only (IQ quants, TQ quants, ...): the file can be
    /// opened and its other tensors read, but this tensor cannot be dequantized.
    Other(u32),
}

/// Values per k-quant super-block.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Maps the `ggml_type` id stored in a GGUF tensor info.
    pub fn from_u32(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            20 => GgmlType::IQ4_NL,
            24 => GgmlType::I8,
            25 => GgmlType::I16,
            26 => GgmlType::I32,
            27 => GgmlType::I64,
            28 => GgmlType::F64,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The `ggml_type` id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::IQ4_NL => 20,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// Name as llama.cpp / `gguf-py` print it (`Q4_K`, `F32`, ...).
    pub fn name(self) -> String {
        match self {
            GgmlType::Other(id) => format!("ggml_type({id})"),
            known => format!("{known:?}"),
        }
    }

    /// `(values per block, bytes per block)`, or `None` for ids this crate does not know the
    /// layout of (then the tensor's byte size cannot be computed either).
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::BF16 => (1, 2),
            GgmlType::F64 => (1, 8),
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 => (1, 8),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (QK_K, 84),
            GgmlType::Q3_K => (QK_K, 110),
            GgmlType::Q4_K => (QK_K, 144),
            GgmlType::Q5_K => (QK_K, 176),
            GgmlType::Q6_K => (QK_K, 210),
            GgmlType::Q8_K => (QK_K, 292),
            GgmlType::IQ4_NL => (32, 18),
            GgmlType::Other(_) => return None,
        })
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::F64
                | GgmlType::I8
                | GgmlType::I16
                | GgmlType::I32
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q8_0
                | GgmlType::Q2_K
                | GgmlType::Q3_K
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
                | GgmlType::Q8_K
                | GgmlType::IQ4_NL
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Why a byte slice could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("dequantizing {ty} is not supported")]
    Unsupported { ty: GgmlType },
    #[error("{ty}: {n} values is not a whole number of {block}-value blocks")]
    PartialBlock { ty: GgmlType, n: usize, block: usize },
    #[error("{ty}: {n} values need {needed} bytes, got {got}")]
    WrongByteLength {
        ty: GgmlType,
        n: usize,
        needed: usize,
        got: usize,
    },
}

/// Bytes needed to store `n` values of `ty`, or an error if `n` is not a whole number of blocks
/// (or the type's layout is unknown). `None` inside `Ok` never happens; overflow is an error.
pub fn byte_len(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let (block, size) = ty.block_layout().ok_or(QuantError::Unsupported { ty })?;
    if !n.is_multiple_of(block) {
        return Err(QuantError::PartialBlock { ty, n, block });
    }
    // n / block * size cannot overflow when n itself fits, unless size > block (true for F64
    // etc.): use checked arithmetic anyway.
    (n / block).checked_mul(size).ok_or(QuantError::WrongByteLength {
        ty,
        n,
        needed: usize::MAX,
        got: 0,
    })
}

/// Dequantizes `data` (exactly the bytes of `out.len()` values of type `ty`) into `out`.
///
/// Single-threaded on purpose: on the 2-core target, splitting tensors across two scoped threads
/// measured slower (Gemma 3 270M, all tensors: 0.84 s with 2 threads vs 0.59 s with one, under
/// concurrent load), because the big tensors are bound by page faults on the fresh output buffer.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    if !ty.can_dequantize() {
        return Err(QuantError::Unsupported { ty });
    }
    let n = out.len();
    let needed = byte_len(ty, n)?;
    if data.len() != needed {
        return Err(QuantError::WrongByteLength {
            ty,
            n,
            needed,
            got: data.len(),
        });
    }
    dequantize_serial(ty, data, out);
    Ok(())
}

/// Convenience wrapper returning a fresh vector of `n` values.
pub fn dequantize_to_vec(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0f32; n];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// Lengths were validated by the caller: `data` holds exactly the blocks of `out`.
fn dequantize_serial(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::F64 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32;
            }
        }
        GgmlType::I8 => {
            for (o, &b) in out.iter_mut().zip(data) {
                *o = b as i8 as f32;
            }
        }
        GgmlType::I16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = i16::from_le_bytes([c[0], c[1]]) as f32;
            }
        }
        GgmlType::I32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32;
            }
        }
        GgmlType::Q4_0 => blocks::<18, 32>(data, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(data, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(data, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(data, out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(data, out, q8_0),
        GgmlType::IQ4_NL => blocks::<18, 32>(data, out, iq4_nl),
        GgmlType::Q2_K => blocks::<84, QK_K>(data, out, q2_k),
        GgmlType::Q3_K => blocks::<110, QK_K>(data, out, q3_k),
        GgmlType::Q4_K => blocks::<144, QK_K>(data, out, q4_k),
        GgmlType::Q5_K => blocks::<176, QK_K>(data, out, q5_k),
        GgmlType::Q6_K => blocks::<210, QK_K>(data, out, q6_k),
        GgmlType::Q8_K => blocks::<292, QK_K>(data, out, q8_k),
        _ => unreachable!("dequantize checks can_dequantize first"),
    }
}

/// Applies a per-block kernel over fixed-size arrays, so the kernels index without bounds checks.
#[inline(always)]
fn blocks<const B: usize, const N: usize>(data: &[u8], out: &mut [f32], f: impl Fn(&[u8; B], &mut [f32; N])) {
    for (blk, o) in data.chunks_exact(B).zip(out.chunks_exact_mut(N)) {
        f(blk.try_into().expect("chunk of B"), o.try_into().expect("chunk of N"));
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

// --- 32-value blocks -------------------------------------------------------------------------

/// `{ f16 d; u8 qs[16] }`: low nibbles are values 0..16, high nibbles 16..32, both offset by 8.
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `{ f16 d; f16 m; u8 qs[16] }`: `x = q * d + m`.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `BITS_X16[b][k]` = bit k of byte b, times 16: the fifth bit of eight Q5 values at once.
/// (A table because per-lane variable shifts do not vectorize on baseline x86-64.)
static BITS_X16: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            t[b][k] = (((b >> k) & 1) as u8) << 4;
            k += 1;
        }
        b += 1;
    }
    t
};

/// The fifth bits of the 32 values of a Q5_0/Q5_1 block (value j: bit j of the LE u32 `qh`), as 0/16.
#[inline(always)]
fn q5_high_bits(qh: &[u8]) -> [u8; 32] {
    let mut h = [0u8; 32];
    for i in 0..4 {
        h[8 * i..8 * i + 8].copy_from_slice(&BITS_X16[qh[i] as usize]);
    }
    h
}

/// `{ f16 d; u8 qh[4]; u8 qs[16] }`: the fifth bit of value j is bit j of `qh`; offset 16.
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let h = q5_high_bits(&b[2..6]);
    let qs = &b[6..22];
    for j in 0..16 {
        y[j] = (((qs[j] & 0x0F) | h[j]) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | h[j + 16]) as i32 - 16) as f32 * d;
    }
}

/// `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`: `x = q * d + m` with 5-bit `q`.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let h = q5_high_bits(&b[4..8]);
    let qs = &b[8..24];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) | h[j]) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | h[j + 16]) as f32 * d + m;
    }
}

/// `{ f16 d; i8 qs[32] }`.
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The 16 non-uniform levels of IQ4_NL (`kvalues_iq4nl` in ggml-common.h): denser near zero,
/// where trained weights are.
const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// `{ f16 d; u8 qs[16] }`: like Q4_0 (low nibbles are values 0..16, high nibbles 16..32), but each
/// nibble indexes [`KVALUES_IQ4NL`] instead of being offset by 8.
fn iq4_nl(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

// --- k-quants (256-value super-blocks) -------------------------------------------------------

/// Unpacks the j-th 6-bit (scale, min) pair of the 12-byte `scales` of Q4_K / Q5_K.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `{ u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }`: 2-bit values, 4-bit scale and min per 16.
fn q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let scales = &b[0..16];
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut is = 0;
    let mut yi = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            let sc = scales[is];
            is += 1;
            let (dl, ml) = (d * (sc & 0x0F) as f32, min * (sc >> 4) as f32);
            for &ql in &q[..16] {
                y[yi] = dl * ((ql >> shift) & 3) as f32 - ml;
                yi += 1;
            }
            let sc = scales[is];
            is += 1;
            let (dl, ml) = (d * (sc & 0x0F) as f32, min * (sc >> 4) as f32);
            for &ql in &q[16..] {
                y[yi] = dl * ((ql >> shift) & 3) as f32 - ml;
                yi += 1;
            }
        }
    }
}

/// `{ u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }`: 3-bit values, 6-bit signed scales.
fn q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let hm = &b[0..32];
    let d_all = f16_at(b, 108);
    let s = &b[96..108];
    let mut aux = [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
        0,
    ];
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
    aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
    aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
    aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
    let mut scales = [0i8; 16];
    for (i, a) in aux.iter().enumerate() {
        for (k, byte) in a.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = *byte as i8;
        }
    }
    let mut is = 0;
    let mut yi = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 16 * half..16 * half + 16 {
                    let hi = if hm[l] & m != 0 { 0 } else { 4 };
                    y[yi] = dl * (((q[l] >> shift) & 3) as i32 - hi) as f32;
                    yi += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`: 4-bit values, 6-bit scale and min per 32.
fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    for (j, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &b[16 + 32 * j..16 + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (lo, hi) = chunk.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`: Q4_K plus a fifth bit per value.
fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (j, chunk) in y.chunks_exact_mut(64).enumerate() {
        let ql = &b[48 + 32 * j..48 + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        let (lo, hi) = chunk.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            hi[l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`: 6-bit values offset by 32, i8 scale per 16.
fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            chunk[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            chunk[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            chunk[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            chunk[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// `{ f32 d; i8 qs[256]; i16 bsums[16] }`: llama.cpp's activation format for k-quant dot
/// products; the scale is a full f32 and `bsums` (sums of 16 values, a cache for the dot
/// product) do not enter the values.
fn q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
        *o = d * (q as i8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_ggml() {
        // Sizes from ggml-common.h static_asserts.
        assert_eq!(GgmlType::Q4_K.block_layout(), Some((256, 144)));
        assert_eq!(GgmlType::Q6_K.block_layout(), Some((256, 210)));
        assert_eq!(GgmlType::from_u32(30), GgmlType::BF16);
        assert_eq!(GgmlType::from_u32(99), GgmlType::Other(99));
        for id in 0..40 {
            assert_eq!(GgmlType::from_u32(id).id(), id);
        }
    }

    #[test]
    fn q8_0_by_hand() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..32 {
            block[2 + j] = (j as i8 - 16) as u8;
        }
        let y = dequantize_to_vec(GgmlType::Q8_0, &block, 32).unwrap();
        for (j, &v) in y.iter().enumerate() {
            assert_eq!(v, (j as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        block[2] = 0xA3; // value 0 = 3 - 8, value 16 = 10 - 8
        let y = dequantize_to_vec(GgmlType::Q4_0, &block, 32).unwrap();
        assert_eq!(y[0], -5.0);
        assert_eq!(y[16], 2.0);
        assert_eq!(y[1], -8.0);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(matches!(
            dequantize_to_vec(GgmlType::Q8_0, &[0u8; 33], 32),
            Err(QuantError::WrongByteLength { .. })
        ));
        assert!(matches!(
            dequantize_to_vec(GgmlType::Q8_0, &[0u8; 34], 31),
            Err(QuantError::PartialBlock { .. })
        ));
        assert!(matches!(
            dequantize_to_vec(GgmlType::Other(39), &[], 0),
            Err(QuantError::Unsupported { .. })
        ));
        assert!(matches!(
            dequantize_to_vec(GgmlType::Q8_K, &[0u8; 291], 256),
            Err(QuantError::WrongByteLength { .. })
        ));
    }
}
