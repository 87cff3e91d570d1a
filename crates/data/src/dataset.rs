//! AxBench's released data layout, read as it is: `metadata.jsonl`, `train_data.parquet`, `latent_eval_data.parquet`
//! (e.g. `concept10/prod_2b_l20_v1/`), and the per-concept selections that `train.py` and `inference.py` make.
//!
//! * Concepts come from `metadata.jsonl`, one JSON object a line: `concept_id`, `concept`, `ref` (the Neuronpedia
//!   feature URL, whose last path component is the SAE feature), and `concept_genres_map: {concept: [genre]}`.
//! * A concept's **training set** (train.py `prepare_df`): its positives (`output_concept == concept`, category
//!   `positive`, 72 in the releases) and the shared negatives (`output_concept == "EEEEE"`, category `negative`) whose
//!   `concept_genre` is the concept's first genre (72 of the 216).
//! * A concept's **eval set** (inference.py latent): the rows of `latent_eval_data.parquet` with its `concept_id`:
//!   36 positives, 36 negatives and 0-9 hard negatives.
//! * `concepts.limit = N` keeps the first N concepts in metadata order (train.py `df_list[:max_concepts]`).
//!
//! Every error names the file, and the line or row and the field at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};

use crate::tables::{self, TableError, col};

/// `output_concept` of the shared negatives (axbench/utils/constants.py EMPTY_CONCEPT).
pub const EMPTY_CONCEPT: &str = "EEEEE";

/// Errors reading AxBench data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: row {row}: column `{column}`: {message}")]
    Field {
        path: PathBuf,
        row: usize,
        column: String,
        message: String,
    },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("concept {concept_id} ({concept:?}): {message}")]
    Concept {
        concept_id: i64,
        concept: String,
        message: String,
    },
}

/// One concept of `metadata.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Concept {
    pub id: i64,
    pub concept: String,
    /// Neuronpedia URL `https://www.neuronpedia.org/<model>/<sae>/<feature>`.
    pub reference: String,
    /// `concept_genres_map[concept]`, e.g. `["text"]`; the first one selects the training negatives.
    pub genres: Vec<String>,
}

impl Concept {
    /// The genre train.py uses: `concept_genres_map[concept][0]`.
    pub fn genre(&self) -> &str {
        &self.genres[0]
    }

    /// The SAE feature index: the last path component of `ref` (what `save_pruned_sae` keeps for this concept).
    pub fn sae_feature(&self) -> Option<usize> {
        self.reference.trim_end_matches('/').rsplit('/').next()?.parse().ok()
    }
}

#[derive(serde::Deserialize)]
struct RawConcept {
    concept_id: i64,
    concept: String,
    #[serde(rename = "ref")]
    reference: String,
    concept_genres_map: BTreeMap<String, Vec<String>>,
}

/// Reads `metadata.jsonl`. Blank lines are skipped; a malformed line is an error naming its line number.
pub fn read_metadata(path: &Path) -> Result<Vec<Concept>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_metadata(&text, path)
}

/// [`read_metadata`] over text already in memory; `path` is only used in errors.
pub fn parse_metadata(text: &str, path: &Path) -> Result<Vec<Concept>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| DataError::Line {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let raw: RawConcept = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let genres = raw.concept_genres_map.get(&raw.concept).cloned().ok_or_else(|| {
            err(format!(
                "`concept_genres_map` has no entry for concept {:?}",
                raw.concept
            ))
        })?;
        if genres.is_empty() {
            return Err(err(format!("`concept_genres_map[{:?}]` is empty", raw.concept)));
        }
        out.push(Concept {
            id: raw.concept_id,
            concept: raw.concept,
            reference: raw.reference,
            genres,
        });
    }
    Ok(out)
}

/// The first `limit` concepts in metadata order (`concepts.limit`; `None` keeps all).
pub fn limit_concepts(concepts: &[Concept], limit: Option<usize>) -> &[Concept] {
    match limit {
        Some(n) => &concepts[..n.min(concepts.len())],
        None => concepts,
    }
}

/// `category` of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Category {
    #[serde(rename = "positive")]
    Positive,
    #[serde(rename = "negative")]
    Negative,
    #[serde(rename = "hard negative")]
    HardNegative,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Positive => "positive",
            Category::Negative => "negative",
            Category::HardNegative => "hard negative",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "positive" => Some(Category::Positive),
            "negative" => Some(Category::Negative),
            "hard negative" => Some(Category::HardNegative),
            _ => None,
        }
    }
}

/// One row of `train_data.parquet` or `latent_eval_data.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The instruction.
    pub input: String,
    /// The response (generated by gpt-4o-mini, or by the steered model for the shared negatives).
    pub output: String,
    /// The concept the response was written for; `"EEEEE"` for the shared negatives, `word//meaning` for hard negatives.
    pub output_concept: String,
    pub concept_genre: String,
    pub category: Category,
    pub dataset_category: String,
    /// `-1` for the shared negatives.
    pub concept_id: i64,
    /// Only in eval data.
    pub sae_link: Option<String>,
    pub sae_id: Option<i64>,
}

/// Reads training data (`sae_link`, `sae_id` are absent there) or eval data (read when present).
pub fn read_examples(path: &Path) -> Result<Vec<Example>, DataError> {
    let batch = tables::read_parquet(path)?;
    examples_from_batch(&batch, path)
}

/// Rows of a batch with AxBench's data columns; `path` names the source in errors.
pub fn examples_from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Example>, DataError> {
    let s = |name| tables::string_column(batch, path, name);
    let (input, output, output_concept) = (s(col::INPUT)?, s(col::OUTPUT)?, s(col::OUTPUT_CONCEPT)?);
    let (genre, category, dataset_category) = (s(col::CONCEPT_GENRE)?, s(col::CATEGORY)?, s(col::DATASET_CATEGORY)?);
    let concept_id = tables::int64_column(batch, path, col::CONCEPT_ID)?;
    let has = |name| batch.schema().index_of(name).is_ok();
    let sae_link = if has(col::SAE_LINK) {
        Some(s(col::SAE_LINK)?)
    } else {
        None
    };
    let sae_id = if has(col::SAE_ID) {
        Some(tables::int64_column(batch, path, col::SAE_ID)?)
    } else {
        None
    };

    let null = |row, column: &str| DataError::Field {
        path: path.to_owned(),
        row,
        column: column.to_owned(),
        message: "null value".into(),
    };
    let req = |a: &StringArray, row: usize, column: &str| -> Result<String, DataError> {
        if a.is_null(row) {
            Err(null(row, column))
        } else {
            Ok(a.value(row).to_owned())
        }
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let cat = req(&category, row, col::CATEGORY)?;
        let category = Category::parse(&cat).ok_or_else(|| DataError::Field {
            path: path.to_owned(),
            row,
            column: col::CATEGORY.into(),
            message: format!("unknown category {cat:?} (expected positive, negative or hard negative)"),
        })?;
        if concept_id.is_null(row) {
            return Err(null(row, col::CONCEPT_ID));
        }
        out.push(Example {
            input: req(&input, row, col::INPUT)?,
            output: req(&output, row, col::OUTPUT)?,
            output_concept: req(&output_concept, row, col::OUTPUT_CONCEPT)?,
            concept_genre: req(&genre, row, col::CONCEPT_GENRE)?,
            category,
            dataset_category: req(&dataset_category, row, col::DATASET_CATEGORY)?,
            concept_id: concept_id.value(row),
            sae_link: sae_link
                .as_ref()
                .and_then(|a| (!a.is_null(row)).then(|| a.value(row).to_owned())),
            sae_id: sae_id.as_ref().and_then(|a| (!a.is_null(row)).then(|| a.value(row))),
        });
    }
    Ok(out)
}

/// Examples as a [`tables::train_data_schema`] batch, or [`tables::eval_data_schema`] with `with_sae`.
pub fn examples_to_batch(examples: &[Example], with_sae: bool) -> Result<RecordBatch, TableError> {
    let s = |f: fn(&Example) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(examples.iter().map(f))) };
    let mut columns: Vec<ArrayRef> = vec![
        s(|e| e.input.as_str()),
        s(|e| e.output.as_str()),
        s(|e| e.output_concept.as_str()),
        s(|e| e.concept_genre.as_str()),
        s(|e| e.category.as_str()),
        s(|e| e.dataset_category.as_str()),
        Arc::new(Int64Array::from_iter_values(examples.iter().map(|e| e.concept_id))),
    ];
    let schema = if with_sae {
        columns.push(Arc::new(StringArray::from_iter(
            examples.iter().map(|e| e.sae_link.as_deref()),
        )));
        columns.push(Arc::new(Int64Array::from_iter(examples.iter().map(|e| e.sae_id))));
        tables::eval_data_schema()
    } else {
        tables::train_data_schema()
    };
    RecordBatch::try_new(schema, columns).map_err(TableError::Build)
}

/// A concept's binarized training set (train.py `prepare_df` with `binarize_dataset`): positives first, label 1, then
/// the genre-matched shared negatives, label 0; both in file order.
#[derive(Debug, Clone)]
pub struct TrainingSet<'a> {
    pub positives: Vec<&'a Example>,
    pub negatives: Vec<&'a Example>,
}

impl<'a> TrainingSet<'a> {
    /// `(example, label)` pairs in AxBench's order (positives, then negatives).
    pub fn labeled(&self) -> impl Iterator<Item = (&'a Example, bool)> + '_ {
        self.positives
            .iter()
            .map(|e| (*e, true))
            .chain(self.negatives.iter().map(|e| (*e, false)))
    }

    pub fn len(&self) -> usize {
        self.positives.len() + self.negatives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Selects `concept`'s training set from all training rows. `max_num_of_examples` is AxBench's option of the same
/// name: each side is cut to its first `n / 2` rows. A concept with no positives or no negatives is an error, since
/// no method can be fitted on one class.
pub fn training_set<'a>(
    all: &'a [Example],
    concept: &Concept,
    max_num_of_examples: Option<usize>,
) -> Result<TrainingSet<'a>, DataError> {
    let mut positives: Vec<_> = all
        .iter()
        .filter(|e| {
            e.concept_id == concept.id && e.output_concept == concept.concept && e.category == Category::Positive
        })
        .collect();
    let mut negatives: Vec<_> = all
        .iter()
        .filter(|e| {
            e.output_concept == EMPTY_CONCEPT && e.category == Category::Negative && e.concept_genre == concept.genre()
        })
        .collect();
    if let Some(n) = max_num_of_examples {
        positives.truncate(n / 2);
        negatives.truncate(n / 2);
    }
    let err = |message: String| DataError::Concept {
        concept_id: concept.id,
        concept: concept.concept.clone(),
        message,
    };
    if positives.is_empty() {
        return Err(err(
            "no positive training rows (output_concept == concept, category positive)".into(),
        ));
    }
    if negatives.is_empty() {
        return Err(err(format!(
            "no shared negatives (output_concept \"EEEEE\") of genre {:?}",
            concept.genre()
        )));
    }
    Ok(TrainingSet { positives, negatives })
}

/// A concept's latent eval rows (positives, negatives, hard negatives) in file order.
pub fn eval_set(all: &[Example], concept_id: i64) -> Vec<&Example> {
    all.iter().filter(|e| e.concept_id == concept_id).collect()
}

/// The shared negative pool of the imbalanced setting (utils/dataset.py `create_imbalance_eval_df`, used by
/// inference.py `latent_imbalance`): `n = latent_num_of_examples * imbalance_factor` (36 * 100 = 3600) rows of
/// category `negative` drawn from all concepts' eval rows without replacement, exactly as pandas
/// `df.sample(n, random_state=seed)` draws them (numpy's legacy `RandomState(seed).permutation(len)[:n]`).
/// More rows than there are negatives is an error, as in pandas (Concept10's 360 negatives cannot give 3600).
pub fn imbalance_negative_pool(eval: &[Example], n: usize, seed: u32) -> Result<Vec<&Example>, DataError> {
    let negatives: Vec<&Example> = eval.iter().filter(|e| e.category == Category::Negative).collect();
    if n > negatives.len() {
        return Err(DataError::Concept {
            concept_id: -1,
            concept: EMPTY_CONCEPT.into(),
            message: format!(
                "imbalanced pool of {n} negatives requested, only {} in the eval data",
                negatives.len()
            ),
        });
    }
    let order = np_random::RandomState::new(seed).permutation(negatives.len());
    Ok(order[..n].iter().map(|&i| negatives[i]).collect())
}

/// numpy's legacy `RandomState` (MT19937), just enough to reproduce pandas `sample` and `np.random.shuffle`.
pub mod np_random {
    const N: usize = 624;
    const M: usize = 397;

    /// `np.random.RandomState(seed)` for an integer seed.
    pub struct RandomState {
        pub(super) mt: [u32; N],
        pos: usize,
    }

    impl RandomState {
        /// numpy's `mt19937_seed` (the reference `init_genrand`).
        pub fn new(seed: u32) -> Self {
            let mut mt = [0u32; N];
            mt[0] = seed;
            for i in 1..N {
                mt[i] = 1812433253u32
                    .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                    .wrapping_add(i as u32);
            }
            Self { mt, pos: N }
        }

        fn regenerate(&mut self) {
            for i in 0..N {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % N] & 0x7fff_ffff);
                let mut v = self.mt[(i + M) % N] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.pos = 0;
        }

        /// The next 32-bit output (`genrand_int32`).
        pub fn next_u32(&mut self) -> u32 {
            if self.pos >= N {
                self.regenerate();
            }
            let mut y = self.mt[self.pos];
            self.pos += 1;
            y ^= y >> 11;
            y ^= (y << 7) & 0x9d2c_5680;
            y ^= (y << 15) & 0xefc6_0000;
            y ^ (y >> 18)
        }

        /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
        pub fn random_interval(&mut self, max: u32) -> u32 {
            if max == 0 {
                return 0;
            }
            let mut mask = max;
            for shift in [1, 2, 4, 8, 16] {
                mask |= mask >> shift;
            }
            loop {
                let v = self.next_u32() & mask;
                if v <= max {
                    return v;
                }
            }
        }

        /// `RandomState.shuffle` of a 1-d array (Fisher-Yates from the end).
        pub fn shuffle<T>(&mut self, x: &mut [T]) {
            for i in (1..x.len()).rev() {
                let j = self.random_interval(i as u32) as usize;
                x.swap(i, j);
            }
        }

        /// `RandomState.permutation(n)`.
        pub fn permutation(&mut self, n: usize) -> Vec<usize> {
            let mut v: Vec<usize> = (0..n).collect();
            self.shuffle(&mut v);
            v
        }
    }
}

/// The three files of one AxBench data directory, read eagerly.
#[derive(Debug, Clone)]
pub struct AxBenchData {
    pub dir: PathBuf,
    pub concepts: Vec<Concept>,
    pub train: Vec<Example>,
    /// `None` when the directory has no `latent_eval_data.parquet`.
    pub eval: Option<Vec<Example>>,
}

impl AxBenchData {
    pub const METADATA: &str = "metadata.jsonl";
    pub const TRAIN: &str = "train_data.parquet";
    pub const EVAL: &str = "latent_eval_data.parquet";

    /// Reads `dir/{metadata.jsonl, train_data.parquet, latent_eval_data.parquet}`.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let concepts = read_metadata(&dir.join(Self::METADATA))?;
        let train = read_examples(&dir.join(Self::TRAIN))?;
        let eval_path = dir.join(Self::EVAL);
        let eval = if eval_path.exists() {
            Some(read_examples(&eval_path)?)
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_owned(),
            concepts,
            train,
            eval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASED: &str = "/work/shared/axbench-data/concept10/prod_2b_l20_v1";
    /// pandas 2 / numpy 2.4: `df[df.category == "negative"].sample(100, random_state=42).index[:8]` on the release.
    const EXPECTED_POOL_ROWS: [usize; 8] = [506, 115, 605, 658, 129, 592, 51, 130];
    /// `np.random.RandomState(7).random_sample()`.
    const RANDOM_SAMPLE_SEED_7: f64 = 0.07630828937395717;

    fn released() -> Option<AxBenchData> {
        let dir = Path::new(RELEASED);
        dir.exists()
            .then(|| AxBenchData::open(dir).expect("released data reads"))
    }

    #[test]
    fn released_concept10_layout() {
        let Some(data) = released() else {
            eprintln!("skipping: {RELEASED} not present");
            return;
        };
        assert_eq!(data.concepts.len(), 10);
        assert_eq!(data.concepts[0].id, 0);
        assert_eq!(
            data.concepts[0].concept,
            "references to rental services and associated equipment"
        );
        assert_eq!(data.concepts[0].sae_feature(), Some(16038));
        assert_eq!(data.concepts[2].genre(), "code");
        assert_eq!(data.train.len(), 936);
        let eval = data.eval.as_ref().unwrap();
        assert_eq!(eval.len(), 755);
        assert_eq!(eval[0].sae_id, Some(16038));
        for c in &data.concepts {
            let ts = training_set(&data.train, c, None).unwrap();
            assert_eq!((ts.positives.len(), ts.negatives.len()), (72, 72), "concept {}", c.id);
            assert!(
                ts.negatives
                    .iter()
                    .all(|e| e.concept_genre == c.genre() && e.concept_id == -1)
            );
            let labeled: Vec<_> = ts.labeled().map(|(_, l)| l).collect();
            assert!(labeled[..72].iter().all(|l| *l) && labeled[72..].iter().all(|l| !*l));
            let ev = eval_set(eval, c.id);
            let n = |cat| ev.iter().filter(|e| e.category == cat).count();
            assert_eq!((n(Category::Positive), n(Category::Negative)), (36, 36));
        }
        // Hard negatives per concept in the release: 1 5 9 2 4 9 2 0 1 2 (35 in all).
        let hard: Vec<_> = data
            .concepts
            .iter()
            .map(|c| {
                eval_set(eval, c.id)
                    .iter()
                    .filter(|e| e.category == Category::HardNegative)
                    .count()
            })
            .collect();
        assert_eq!(hard, vec![1, 5, 9, 2, 4, 9, 2, 0, 1, 2]);
        assert_eq!(limit_concepts(&data.concepts, Some(3)).len(), 3);
        assert_eq!(limit_concepts(&data.concepts, Some(30)).len(), 10);
        let ts = training_set(&data.train, &data.concepts[0], Some(20)).unwrap();
        assert_eq!((ts.positives.len(), ts.negatives.len()), (10, 10));
    }

    #[test]
    fn numpy_random_state_matches_numpy() {
        // np.random.RandomState(5489).get_state()[1][:3] and RandomState(42).permutation(10) (numpy 2.4).
        let r = np_random::RandomState::new(5489);
        assert_eq!(r.mt[..3], [5489, 1301868182, 2938499221]);
        assert_eq!(
            np_random::RandomState::new(42).permutation(10),
            [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]
        );
        // RandomState(7).random_sample() is built from two 32-bit words: (a >> 5, b >> 6).
        let mut r = np_random::RandomState::new(7);
        let (a, b) = ((r.next_u32() >> 5) as f64, (r.next_u32() >> 6) as f64);
        assert_eq!((a * 67108864.0 + b) / 9007199254740992.0, RANDOM_SAMPLE_SEED_7);
    }

    #[test]
    fn imbalance_pool_is_pandas_sample() {
        let Some(data) = released() else { return };
        let eval = data.eval.unwrap();
        // pandas: eval[eval.category == "negative"].sample(100, random_state=42).index[:8] on the released file.
        let pool = imbalance_negative_pool(&eval, 100, 42).unwrap();
        let rows: Vec<usize> = pool[..8]
            .iter()
            .map(|e| eval.iter().position(|x| std::ptr::eq(x, *e)).unwrap())
            .collect();
        assert_eq!(rows, EXPECTED_POOL_ROWS);
        let err = imbalance_negative_pool(&eval, 3600, 42).unwrap_err().to_string();
        assert!(err.contains("3600") && err.contains("360"), "{err}");
    }

    #[test]
    fn examples_roundtrip_through_parquet() {
        let Some(data) = released() else { return };
        let dir = tempfile::tempdir().unwrap();
        let eval = data.eval.unwrap();
        let path = dir.path().join("eval.parquet");
        tables::write_parquet_atomic(&path, &examples_to_batch(&eval, true).unwrap()).unwrap();
        assert_eq!(read_examples(&path).unwrap(), eval);
        let path = dir.path().join("train.parquet");
        tables::write_parquet_atomic(&path, &examples_to_batch(&data.train, false).unwrap()).unwrap();
        assert_eq!(read_examples(&path).unwrap(), data.train);
    }

    #[test]
    fn malformed_metadata_names_line_and_field() {
        let p = Path::new("m.jsonl");
        let ok = r#"{"concept_id": 0, "concept": "a", "ref": "https://x/y/7", "concept_genres_map": {"a": ["text"]}}"#;
        let missing = r#"{"concept_id": 1, "concept": "b", "concept_genres_map": {"b": ["text"]}}"#;
        let err = parse_metadata(&format!("{ok}\n\n{missing}\n"), p)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.jsonl:3:") && err.contains("`ref`"), "{err}");
        let err = parse_metadata(&format!("{ok}\n{{not json\n"), p)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.jsonl:2:"), "{err}");
        let wrong_genre = r#"{"concept_id": 1, "concept": "b", "ref": "r", "concept_genres_map": {"c": ["text"]}}"#;
        let err = parse_metadata(wrong_genre, p).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:1:") && err.contains("\"b\""), "{err}");
        let c = &parse_metadata(ok, p).unwrap()[0];
        assert_eq!((c.sae_feature(), c.genre()), (Some(7), "text"));
    }

    #[test]
    fn parquet_missing_column_and_bad_category_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Example {
            input: "i".into(),
            output: "o".into(),
            output_concept: "c".into(),
            concept_genre: "text".into(),
            category: Category::Positive,
            dataset_category: "instruction".into(),
            concept_id: 0,
            sae_link: None,
            sae_id: None,
        };
        let batch = examples_to_batch(&[ex.clone(), ex], false).unwrap();
        // Drop `output_concept`.
        let dropped = batch.project(&[0, 1, 3, 4, 5, 6]).unwrap();
        let path = dir.path().join("bad.parquet");
        tables::write_parquet_atomic(&path, &dropped).unwrap();
        let err = read_examples(&path).unwrap_err().to_string();
        assert!(err.contains("bad.parquet") && err.contains("`output_concept`"), "{err}");
        // An unknown category on row 1.
        let mut cols = batch.columns().to_vec();
        cols[4] = Arc::new(StringArray::from(vec!["positive", "neutral"]));
        let odd = RecordBatch::try_new(batch.schema(), cols).unwrap();
        tables::write_parquet_atomic(&path, &odd).unwrap();
        let err = read_examples(&path).unwrap_err().to_string();
        assert!(
            err.contains("row 1") && err.contains("`category`") && err.contains("neutral"),
            "{err}"
        );
    }
}
