//! Token prices and what a run spent.
//!
//! Prices live in `configs/lm_prices.toml` (USD per 1M tokens), not in code, so a price change is
//! a config edit. Only calls that reached the backend are charged: cache hits cost nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::types::Usage;

/// Price of one model, USD per one million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    /// Dollars for `usage` at this price.
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input + usage.completion_tokens as f64 * self.output) / 1e6
    }
}

/// Prices by model name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    pub models: BTreeMap<String, Price>,
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("price table {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("price table {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("price table {path}: model {model:?}: field `{field}` must be a finite, non-negative number")]
    BadPrice {
        path: PathBuf,
        model: String,
        field: &'static str,
    },
}

impl PriceTable {
    /// Read a table such as `configs/lm_prices.toml`.
    pub fn load(path: &Path) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, PriceError> {
        let table: PriceTable = toml::from_str(text).map_err(|e| PriceError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        for (model, price) in &table.models {
            for (field, v) in [("input", price.input), ("output", price.output)] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(PriceError::BadPrice {
                        path: origin.into(),
                        model: model.clone(),
                        field,
                    });
                }
            }
        }
        Ok(table)
    }

    /// The price of `model`: an exact entry, else the longest entry the name starts with followed
    /// by `-` and a digit, i.e. a dated snapshot (so `gpt-4o-mini-2024-07-18` is priced as
    /// `gpt-4o-mini`, never as `gpt-4o`; an unknown variant such as `gpt-4o-mini-search` is unpriced
    /// and reported as such rather than guessed).
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.models.get(model) {
            return Some(*p);
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PriceTable {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lm_prices.toml");
        PriceTable::load(&path).unwrap()
    }

    #[test]
    fn gpt_4o_mini_matches_the_paper() {
        let p = shipped().price("gpt-4o-mini").unwrap();
        assert_eq!(
            p,
            Price {
                input: 0.15,
                output: 0.60
            }
        );
        // 1M in + 1M out = $0.75
        let c = p.cost(Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
        });
        assert!((c - 0.75).abs() < 1e-12);
    }

    #[test]
    fn dated_names_take_the_longest_prefix() {
        let t = shipped();
        assert_eq!(t.price("gpt-4o-mini-2024-07-18"), t.price("gpt-4o-mini"));
        assert_eq!(t.price("gpt-4o-2024-08-06"), t.price("gpt-4o"));
        assert_eq!(t.price("gpt-4o-minix"), None);
        assert_eq!(t.price("gpt-4o-mini-search"), None);
        assert_eq!(t.price("llama"), None);
    }

    #[test]
    fn bad_tables_name_file_and_field() {
        let e = PriceTable::parse("[models.m]\ninput = -1.0\noutput = 1.0\n", Path::new("p.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "price table p.toml: model \"m\": field `input` must be a finite, non-negative number"
        );
        let e = PriceTable::parse("[models.m]\ninput = 1.0\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml") && e.contains("output"), "{e}");
    }
}
