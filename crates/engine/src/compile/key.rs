//! Node keys. In the style of ruff_cache: a [`CacheKey`] trait hashes values
//! deterministically into a [`KeyHasher`] — maps in sorted order, every field tagged and
//! length-prefixed, numbers in canonical form, and no `Path` impl at all, so an absolute path
//! can never leak into a key (file params contribute their content digest instead).
//!
//! A node key is computed in two steps so the scheduler can finish it cheaply once inputs are
//! known (early cutoff: an input recomputed to identical bytes yields the identical key):
//! `static_key = H(kind, code version, coordinate, canonical params)` is known at plan time;
//! `node_key = H(static_key, inputs' output digests)`.

use std::collections::{BTreeMap, HashMap};

use axbench_cache::Digest;

use crate::value::Value;

/// Feeds a value into a key, deterministically across runs, machines and working directories.
pub trait CacheKey {
    fn cache_key(&self, hasher: &mut KeyHasher);
}

/// blake3 with framing helpers: every item is tagged and length-prefixed so that
/// `("ab","c")` and `("a","bc")` never collide.
pub struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    pub fn new(domain: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(domain.as_bytes());
        h.update(&[0]);
        KeyHasher(h)
    }
    pub fn tag(&mut self, tag: u8) {
        self.0.update(&[tag]);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    pub fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }
    pub fn finish(self) -> Digest {
        self.0.finalize().into()
    }
}

impl CacheKey for str {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b's');
        h.bytes(self.as_bytes());
    }
}
impl CacheKey for String {
    fn cache_key(&self, h: &mut KeyHasher) {
        self.as_str().cache_key(h)
    }
}
impl CacheKey for u32 {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'u');
        h.u64(*self as u64);
    }
}
impl CacheKey for u64 {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'U');
        h.u64(*self);
    }
}
impl CacheKey for i64 {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'i');
        h.u64(*self as u64);
    }
}
impl CacheKey for bool {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'b');
        h.u64(*self as u64);
    }
}
impl CacheKey for f64 {
    /// Integral floats hash as integers (`9.0` ≡ `9`); `-0.0` ≡ `0`; NaNs hash as one value.
    fn cache_key(&self, h: &mut KeyHasher) {
        match Value::Float(*self).normalized() {
            Value::Int(i) => i.cache_key(h),
            _ => {
                h.tag(b'f');
                let bits = if self.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    self.to_bits()
                };
                h.u64(bits);
            }
        }
    }
}
impl CacheKey for Digest {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'd');
        h.0.update(&self.0);
    }
}
impl<T: CacheKey> CacheKey for [T] {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'[');
        h.u64(self.len() as u64);
        for v in self {
            v.cache_key(h);
        }
    }
}
impl<T: CacheKey> CacheKey for Vec<T> {
    fn cache_key(&self, h: &mut KeyHasher) {
        self.as_slice().cache_key(h)
    }
}
impl<T: CacheKey> CacheKey for Option<T> {
    fn cache_key(&self, h: &mut KeyHasher) {
        match self {
            None => h.tag(b'0'),
            Some(v) => {
                h.tag(b'1');
                v.cache_key(h)
            }
        }
    }
}
impl<K: CacheKey, V: CacheKey> CacheKey for BTreeMap<K, V> {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.tag(b'{');
        h.u64(self.len() as u64);
        for (k, v) in self {
            k.cache_key(h);
            v.cache_key(h);
        }
    }
}
impl<K: CacheKey + Ord, V: CacheKey> CacheKey for HashMap<K, V> {
    /// Sorted first: a `HashMap`'s iteration order is random per process.
    fn cache_key(&self, h: &mut KeyHasher) {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        h.tag(b'{');
        h.u64(entries.len() as u64);
        for (k, v) in entries {
            k.cache_key(h);
            v.cache_key(h);
        }
    }
}
impl CacheKey for Value {
    fn cache_key(&self, h: &mut KeyHasher) {
        match self {
            Value::Bool(b) => b.cache_key(h),
            Value::Int(i) => i.cache_key(h),
            Value::Float(f) => f.cache_key(h),
            Value::Str(s) => s.cache_key(h),
            Value::List(l) => l.cache_key(h),
            Value::Table(t) => t.cache_key(h),
        }
    }
}

/// A param as it enters the key: its canonical value, or for file/dir params the content
/// digest (never the path).
#[derive(Clone, Debug, PartialEq)]
pub enum KeyParam {
    Value(Value),
    Content(Digest),
}

impl CacheKey for KeyParam {
    fn cache_key(&self, h: &mut KeyHasher) {
        match self {
            KeyParam::Value(v) => {
                h.tag(b'v');
                v.normalized().cache_key(h)
            }
            KeyParam::Content(d) => {
                h.tag(b'c');
                d.cache_key(h)
            }
        }
    }
}

/// The plan-time part of a node key.
pub fn static_key(
    kind: &str,
    version: u32,
    coord: &BTreeMap<String, Value>,
    params: &BTreeMap<String, KeyParam>,
) -> Digest {
    let mut h = KeyHasher::new("axbench.node.static.v1");
    kind.cache_key(&mut h);
    version.cache_key(&mut h);
    coord.cache_key(&mut h);
    params.cache_key(&mut h);
    h.finish()
}

/// One input as it enters the key: input name, the upstream coordinate, and the upstream
/// output digests by file name.
pub struct KeyInput<'a> {
    pub name: &'a str,
    pub coord: &'a BTreeMap<String, Value>,
    pub outputs: &'a BTreeMap<String, Digest>,
}

/// The full node key. Inputs must be given in a deterministic order (input name, then
/// upstream node order), which the graph guarantees.
pub fn node_key(static_key: &Digest, inputs: &[KeyInput<'_>]) -> Digest {
    let mut h = KeyHasher::new("axbench.node.v1");
    static_key.cache_key(&mut h);
    h.u64(inputs.len() as u64);
    for i in inputs {
        i.name.cache_key(&mut h);
        i.coord.cache_key(&mut h);
        i.outputs.cache_key(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, KeyParam> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), KeyParam::Value(v.clone())))
            .collect()
    }

    #[test]
    fn framing_prevents_concatenation_collisions() {
        let a = static_key("k", 1, &BTreeMap::new(), &params(&[("ab", Value::from("c"))]));
        let b = static_key("k", 1, &BTreeMap::new(), &params(&[("a", Value::from("bc"))]));
        assert_ne!(a, b);
    }

    #[test]
    fn integral_floats_hash_like_integers() {
        let a = static_key("k", 1, &BTreeMap::new(), &params(&[("x", Value::Int(9))]));
        let b = static_key("k", 1, &BTreeMap::new(), &params(&[("x", Value::Float(9.0))]));
        let c = static_key("k", 1, &BTreeMap::new(), &params(&[("x", Value::Float(9.5))]));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn version_kind_and_content_all_count() {
        let p = params(&[("x", Value::Int(1))]);
        let base = static_key("k", 1, &BTreeMap::new(), &p);
        assert_ne!(base, static_key("k", 2, &BTreeMap::new(), &p));
        assert_ne!(base, static_key("j", 1, &BTreeMap::new(), &p));
        let mut c1 = BTreeMap::new();
        c1.insert("f".to_string(), KeyParam::Content(axbench_cache::hash_bytes(b"one")));
        let mut c2 = BTreeMap::new();
        c2.insert("f".to_string(), KeyParam::Content(axbench_cache::hash_bytes(b"two")));
        assert_ne!(
            static_key("k", 1, &BTreeMap::new(), &c1),
            static_key("k", 1, &BTreeMap::new(), &c2)
        );
    }

    #[test]
    fn hashmap_order_does_not_matter() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..50 {
            a.insert(format!("k{i}"), i as i64);
        }
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), i as i64);
        }
        let mut ha = KeyHasher::new("t");
        a.cache_key(&mut ha);
        let mut hb = KeyHasher::new("t");
        b.cache_key(&mut hb);
        assert_eq!(ha.finish(), hb.finish());
    }
}
