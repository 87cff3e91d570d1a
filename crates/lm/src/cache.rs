//! A content-addressed, directory-backed cache of LM calls.
//!
//! The key is the blake3 hash of a canonical JSON rendering of the request (model, messages,
//! decoding parameters and a schema version): nothing else — no API key, no base URL, no time —
//! so a rerun, another stage, or another machine sharing the directory never pays for the same
//! call twice. One file per entry, written to a temporary file, fsynced and renamed into place,
//! so a crash leaves either the whole entry or none, and concurrent writers of the same key race
//! harmlessly (both write the same answer).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{ChatRequest, Completion};

/// Bumped whenever the key's content or the entry layout changes meaning.
const CACHE_SCHEMA: u32 = 1;

/// The hex blake3 digest naming one cached call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheKey(pub String);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sort object keys recursively so the rendering does not depend on field order.
fn canonicalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, canonicalize(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

/// The canonical JSON text a request's key is the hash of (compact, sorted keys, `null` for
/// unset parameters so "unset" and "absent" cannot collide with a value).
pub fn canonical_json(request: &ChatRequest) -> String {
    #[derive(Serialize)]
    struct KeyContent<'a> {
        schema: u32,
        model: &'a str,
        messages: &'a [super::types::Message],
        params: &'a super::types::SamplingParams,
        // Absent (not null) when unset, so unconstrained keys are those of before the field existed.
        #[serde(skip_serializing_if = "Option::is_none")]
        constraint: Option<&'a super::types::ChoiceConstraint>,
    }
    let content = KeyContent {
        schema: CACHE_SCHEMA,
        model: &request.model,
        messages: &request.messages,
        params: &request.params,
        constraint: request.constraint.as_ref(),
    };
    // Through text first: f32 parameters then render as written (0.7, not 0.699999988).
    let text = serde_json::to_string(&content).expect("request serializes");
    let value: Value = serde_json::from_str(&text).expect("own JSON parses");
    serde_json::to_string(&canonicalize(value)).expect("value serializes")
}

/// The cache key of a request.
pub fn cache_key(request: &ChatRequest) -> CacheKey {
    CacheKey(blake3::hash(canonical_json(request).as_bytes()).to_hex().to_string())
}

/// What one entry file holds: the request (for humans and audits) and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEntry {
    pub key: CacheKey,
    pub request: ChatRequest,
    pub completion: Completion,
}

/// Errors of the cache store.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("LM cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The directory-backed store: `<root>/<first two hex digits>/<key>.json`.
#[derive(Debug, Clone)]
pub struct LmCache {
    root: PathBuf,
}

impl LmCache {
    /// Open (creating if needed) a cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| CacheError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the entry for `key` lives.
    pub fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.root.join(&key.0[..2]).join(format!("{}.json", key.0))
    }

    /// The cached answer for `key`. A missing entry is `None`; so is an unreadable one (logged),
    /// since the cure for a damaged entry is to pay for the call again and overwrite it.
    pub fn get(&self, key: &CacheKey) -> Option<Completion> {
        let path = self.path_of(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable LM cache entry; treating as a miss");
                return None;
            }
        };
        match serde_json::from_slice::<CacheEntry>(&bytes) {
            Ok(entry) if entry.key == *key => Some(entry.completion),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "LM cache entry names another key; treating as a miss");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "damaged LM cache entry; treating as a miss");
                None
            }
        }
    }

    /// Store an answer atomically: temp file in the same directory, fsync, rename, fsync dir.
    pub fn put(&self, key: &CacheKey, request: &ChatRequest, completion: &Completion) -> Result<(), CacheError> {
        let path = self.path_of(key);
        let dir = path.parent().expect("entry has a parent").to_path_buf();
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let entry = CacheEntry {
            key: key.clone(),
            request: request.clone(),
            completion: completion.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&entry).expect("entry serializes");
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        // The rename is durable only once the directory itself is synced.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Number of entries (walks the directory; for reports and tests).
    pub fn len(&self) -> usize {
        let Ok(shards) = fs::read_dir(&self.root) else {
            return 0;
        };
        shards
            .flatten()
            .filter(|s| s.path().is_dir())
            .flat_map(|s| fs::read_dir(s.path()).into_iter().flatten().flatten())
            .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FinishReason, Message, SamplingParams, Usage};

    fn req(temp: Option<f32>) -> ChatRequest {
        ChatRequest::user(
            "gpt-4o-mini",
            "Say hi",
            SamplingParams {
                temperature: temp,
                ..Default::default()
            },
        )
    }

    #[test]
    fn canonical_json_is_sorted_and_exact() {
        insta::assert_snapshot!(canonical_json(&req(Some(0.7))), @r#"{"messages":[{"content":"Say hi","role":"user"}],"model":"gpt-4o-mini","params":{"max_tokens":null,"replica":0,"seed":null,"temperature":0.7,"top_p":null},"schema":1}"#);
    }

    #[test]
    fn key_depends_on_every_input() {
        let base = cache_key(&req(Some(0.7)));
        assert_eq!(base, cache_key(&req(Some(0.7))));
        assert_ne!(base, cache_key(&req(Some(1.0))));
        assert_ne!(base, cache_key(&req(None)));
        let mut other_model = req(Some(0.7));
        other_model.model = "gpt-4o".into();
        assert_ne!(base, cache_key(&other_model));
        let mut replica = req(Some(0.7));
        replica.params.replica = 1;
        assert_ne!(base, cache_key(&replica));
        let mut sys = req(Some(0.7));
        sys.messages.insert(0, Message::system("Be brief."));
        assert_ne!(base, cache_key(&sys));
        let constrained = req(Some(0.7)).constrained(super::super::types::ChoiceConstraint::rating());
        assert_ne!(base, cache_key(&constrained));
        assert_eq!(base.0.len(), 64);
    }

    #[test]
    fn put_get_roundtrip_and_damaged_entries_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LmCache::open(dir.path()).unwrap();
        let r = req(Some(0.7));
        let k = cache_key(&r);
        assert!(cache.get(&k).is_none());
        let c = Completion {
            text: "hi".into(),
            finish_reason: FinishReason::Stop,
            refusal: None,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
            },
            model: "gpt-4o-mini-2024-07-18".into(),
        };
        cache.put(&k, &r, &c).unwrap();
        assert_eq!(cache.get(&k), Some(c));
        assert_eq!(cache.len(), 1);
        // No temp files left behind.
        let shard = cache.path_of(&k).parent().unwrap().to_path_buf();
        assert_eq!(fs::read_dir(&shard).unwrap().count(), 1);
        fs::write(cache.path_of(&k), b"{\"key\": \"trunc").unwrap();
        assert!(cache.get(&k).is_none());
    }
}
