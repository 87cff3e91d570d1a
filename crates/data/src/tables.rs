//! The Arrow tables AxBench passes between its stages, with their schemas in one place, and atomic Parquet I/O.
//!
//! Column names follow AxBench's own parquet files, so that its released data (`train_data.parquet`,
//! `latent_eval_data.parquet`) reads as-is and our outputs open in pandas, pyarrow and polars:
//!
//! * [`train_data_schema`]: `generate/train_data.parquet` (`input, output, output_concept, concept_genre, category,
//!   dataset_category, concept_id`),
//! * [`eval_data_schema`]: `inference/latent_eval_data.parquet` (the same plus `sae_link, sae_id`),
//! * [`latent_scores_schema`]: one row per (eval example, method): AxBench keeps these as wide `{Model}_max_act`,
//!   `{Model}_acts` columns of `latent_data.parquet`; we keep them long so that adding a method adds rows, not columns,
//! * [`detection_results_schema`]: one row per (model, layer, method, concept) with the latent evaluators' metrics
//!   (AxBench's `evaluate/latent.jsonl`).
//!
//! Writes are atomic like AxBench's `generate.py` (temp file in the target directory, fsync, rename, fsync the
//! directory), so a crashed stage never leaves a truncated table that a later run would trust.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Builder, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatchReader;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Column names shared by AxBench's training and evaluation data.
pub mod col {
    pub const INPUT: &str = "input";
    pub const OUTPUT: &str = "output";
    pub const OUTPUT_CONCEPT: &str = "output_concept";
    pub const CONCEPT_GENRE: &str = "concept_genre";
    pub const CATEGORY: &str = "category";
    pub const DATASET_CATEGORY: &str = "dataset_category";
    pub const CONCEPT_ID: &str = "concept_id";
    pub const SAE_LINK: &str = "sae_link";
    pub const SAE_ID: &str = "sae_id";
    // Latent scores.
    pub const EXAMPLE_INDEX: &str = "example_index";
    pub const METHOD: &str = "method";
    pub const MAX_ACT: &str = "max_act";
    pub const MAX_ACT_IDX: &str = "max_act_idx";
    pub const ACTS: &str = "acts";
    // Detection results.
    pub const MODEL: &str = "model";
    pub const LAYER: &str = "layer";
    pub const AUROC: &str = "auroc";
    pub const OPTIMAL_THRESHOLD: &str = "optimal_threshold";
    pub const POSITIVE_ACCURACY: &str = "positive_accuracy";
    pub const HARD_NEGATIVE_ACCURACY: &str = "hard_negative_accuracy";
    pub const MACRO_AVG_ACCURACY: &str = "macro_avg_accuracy";
    pub const MAX_F1: &str = "f1";
    pub const MAX_F1_IMBALANCED: &str = "f1_imbalanced";
    pub const N_POSITIVE: &str = "n_positive";
    pub const N_NEGATIVE: &str = "n_negative";
    pub const N_HARD_NEGATIVE: &str = "n_hard_negative";
}

/// Errors reading or writing a table; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[error("{path}: missing column `{column}` (columns present: {present})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        present: String,
    },
    #[error("{path}: column `{column}` has type {found}, expected {expected}")]
    BadType {
        path: PathBuf,
        column: String,
        expected: String,
        found: String,
    },
    #[error("{path}: row {row}: column `{column}` is null")]
    Null { path: PathBuf, row: usize, column: String },
    #[error("building table: {0}")]
    Build(arrow::error::ArrowError),
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// `generate/train_data.parquet`: the 216 shared negatives (`output_concept == "EEEEE"`, `concept_id == -1`) and
/// each concept's 72 positives. Nullable like the pandas-written originals.
pub fn train_data_schema() -> SchemaRef {
    Arc::new(Schema::new(train_fields()))
}

fn train_fields() -> Vec<Field> {
    vec![
        utf8(col::INPUT, true),
        utf8(col::OUTPUT, true),
        utf8(col::OUTPUT_CONCEPT, true),
        utf8(col::CONCEPT_GENRE, true),
        utf8(col::CATEGORY, true),
        utf8(col::DATASET_CATEGORY, true),
        Field::new(col::CONCEPT_ID, DataType::Int64, true),
    ]
}

/// `inference/latent_eval_data.parquet`: per concept 36 positives, 36 negatives and its hard negatives
/// (`category` = `positive | negative | hard negative`), plus the concept's Neuronpedia link and SAE feature.
pub fn eval_data_schema() -> SchemaRef {
    let mut fields = train_fields();
    fields.push(utf8(col::SAE_LINK, true));
    fields.push(Field::new(col::SAE_ID, DataType::Int64, true));
    Arc::new(Schema::new(fields))
}

/// Latent scores, one row per (eval example, method): the max-pooled score AxBench's evaluators read, the index of
/// the first token reaching it, and the per-token scores (rounded to 3 decimals like AxBench; empty for methods
/// without token scores, e.g. BoW).
pub fn latent_scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CONCEPT_ID, DataType::Int64, false),
        Field::new(col::EXAMPLE_INDEX, DataType::UInt32, false),
        utf8(col::METHOD, false),
        utf8(col::CATEGORY, false),
        Field::new(col::MAX_ACT, DataType::Float64, false),
        Field::new(col::MAX_ACT_IDX, DataType::UInt32, true),
        Field::new(
            col::ACTS,
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
            false,
        ),
    ]))
}

/// Detection results, one row per (model, layer, method, concept): AxBench's AUCROCEvaluator and
/// HardNegativeEvaluator outputs plus max-F1 (balanced and 1:100 imbalanced). Null where AxBench returns `{}`.
pub fn detection_results_schema() -> SchemaRef {
    let f = |n: &str| Field::new(n, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        utf8(col::MODEL, false),
        Field::new(col::LAYER, DataType::Int64, false),
        utf8(col::METHOD, false),
        Field::new(col::CONCEPT_ID, DataType::Int64, false),
        f(col::AUROC),
        f(col::OPTIMAL_THRESHOLD),
        f(col::POSITIVE_ACCURACY),
        f(col::HARD_NEGATIVE_ACCURACY),
        f(col::MACRO_AVG_ACCURACY),
        f(col::MAX_F1),
        f(col::MAX_F1_IMBALANCED),
        Field::new(col::N_POSITIVE, DataType::Int64, false),
        Field::new(col::N_NEGATIVE, DataType::Int64, false),
        Field::new(col::N_HARD_NEGATIVE, DataType::Int64, false),
    ]))
}

/// One row of [`latent_scores_schema`].
#[derive(Debug, Clone, PartialEq)]
pub struct LatentScoreRow {
    pub concept_id: i64,
    /// Row index of the example within the concept's eval set (its order in `latent_eval_data.parquet`).
    pub example_index: u32,
    pub method: String,
    pub category: String,
    pub max_act: f64,
    pub max_act_idx: Option<u32>,
    pub acts: Vec<f32>,
}

/// Builds a [`latent_scores_schema`] batch.
pub fn latent_scores_batch(rows: &[LatentScoreRow]) -> Result<RecordBatch, TableError> {
    let mut acts = ListBuilder::new(Float32Builder::new()).with_field(Field::new_list_field(DataType::Float32, false));
    for r in rows {
        acts.values().append_slice(&r.acts);
        acts.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.concept_id))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.example_index))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.method.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.category.as_str()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.max_act))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.max_act_idx))),
        Arc::new(acts.finish()),
    ];
    RecordBatch::try_new(latent_scores_schema(), columns).map_err(TableError::Build)
}

/// One row of [`detection_results_schema`].
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionResultRow {
    pub model: String,
    pub layer: i64,
    pub method: String,
    pub concept_id: i64,
    pub auroc: Option<f64>,
    pub optimal_threshold: Option<f64>,
    pub positive_accuracy: Option<f64>,
    pub hard_negative_accuracy: Option<f64>,
    pub macro_avg_accuracy: Option<f64>,
    pub f1: Option<f64>,
    pub f1_imbalanced: Option<f64>,
    pub n_positive: i64,
    pub n_negative: i64,
    pub n_hard_negative: i64,
}

/// Builds a [`detection_results_schema`] batch.
pub fn detection_results_batch(rows: &[DetectionResultRow]) -> Result<RecordBatch, TableError> {
    let f = |g: fn(&DetectionResultRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(g)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.layer))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.method.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.concept_id))),
        f(|r| r.auroc),
        f(|r| r.optimal_threshold),
        f(|r| r.positive_accuracy),
        f(|r| r.hard_negative_accuracy),
        f(|r| r.macro_avg_accuracy),
        f(|r| r.f1),
        f(|r| r.f1_imbalanced),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_positive))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_negative))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_hard_negative))),
    ];
    RecordBatch::try_new(detection_results_schema(), columns).map_err(TableError::Build)
}

/// Writes `batch` to `path` as Parquet (zstd), atomically: a temp file in the same directory is written, fsynced
/// and renamed over `path`, then the directory is fsynced so the rename itself survives a crash.
pub fn write_parquet_atomic(path: &Path, batch: &RecordBatch) -> Result<(), TableError> {
    let io = |source| TableError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".parquet")
        .tempfile_in(&dir)
        .map_err(io)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = tmp.as_file().try_clone().map_err(io)?;
    let pq = |source| TableError::Parquet {
        path: path.to_owned(),
        source,
    };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    writer.write(batch).map_err(pq)?;
    let mut file = writer.into_inner().map_err(pq)?;
    file.flush().map_err(io)?;
    file.sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Make the rename durable; not every platform can open a directory for syncing, which is fine to skip.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a whole Parquet file into one batch (files here are small: thousands of rows).
pub fn read_parquet(path: &Path) -> Result<RecordBatch, TableError> {
    let file = File::open(path).map_err(|source| TableError::Io {
        path: path.to_owned(),
        source,
    })?;
    let pq = |source| TableError::Parquet {
        path: path.to_owned(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq)?
        .build()
        .map_err(pq)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TableError::Arrow {
            path: path.to_owned(),
            source,
        })?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|source| TableError::Arrow {
        path: path.to_owned(),
        source,
    })
}

/// A column of `batch` by name, cast to `ty` (so `LargeUtf8`/`Utf8View` from polars or `Int32` ids read too).
/// Errors name the file and the column.
pub fn column_as(batch: &RecordBatch, path: &Path, name: &str, ty: &DataType) -> Result<ArrayRef, TableError> {
    let schema = batch.schema();
    let Ok(idx) = schema.index_of(name) else {
        let present = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TableError::MissingColumn {
            path: path.to_owned(),
            column: name.to_owned(),
            present,
        });
    };
    let array = batch.column(idx);
    if array.data_type() == ty {
        return Ok(array.clone());
    }
    let bad = || TableError::BadType {
        path: path.to_owned(),
        column: name.to_owned(),
        expected: ty.to_string(),
        found: array.data_type().to_string(),
    };
    let castable = match ty {
        DataType::Utf8 => matches!(
            array.data_type(),
            DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
        ),
        DataType::Int64 => array.data_type().is_integer() || *array.data_type() == DataType::Null,
        _ => false,
    };
    if !castable {
        return Err(bad());
    }
    arrow::compute::cast(array, ty).map_err(|_| bad())
}

/// A required string column as `StringArray`, see [`column_as`].
pub fn string_column(batch: &RecordBatch, path: &Path, name: &str) -> Result<StringArray, TableError> {
    let a = column_as(batch, path, name, &DataType::Utf8)?;
    Ok(a.as_any().downcast_ref::<StringArray>().expect("cast to Utf8").clone())
}

/// A required integer column as `Int64Array`, see [`column_as`].
pub fn int64_column(batch: &RecordBatch, path: &Path, name: &str) -> Result<Int64Array, TableError> {
    let a = column_as(batch, path, name, &DataType::Int64)?;
    Ok(a.as_any().downcast_ref::<Int64Array>().expect("cast to Int64").clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<LatentScoreRow> {
        vec![
            LatentScoreRow {
                concept_id: 3,
                example_index: 0,
                method: "DiffMean".into(),
                category: "positive".into(),
                max_act: 1.5,
                max_act_idx: Some(2),
                acts: vec![0.1, -0.2, 1.5],
            },
            LatentScoreRow {
                concept_id: 3,
                example_index: 1,
                method: "BoW".into(),
                category: "hard negative".into(),
                max_act: 0.25,
                max_act_idx: None,
                acts: vec![],
            },
        ]
    }

    #[test]
    fn latent_scores_roundtrip_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/latent.parquet");
        let batch = latent_scores_batch(&rows()).unwrap();
        write_parquet_atomic(&path, &batch).unwrap();
        let back = read_parquet(&path).unwrap();
        assert_eq!(back, batch);
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("latent.parquet")]);
    }

    #[test]
    fn overwrite_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_parquet_atomic(&path, &latent_scores_batch(&rows()).unwrap()).unwrap();
        let one = latent_scores_batch(&rows()[..1]).unwrap();
        write_parquet_atomic(&path, &one).unwrap();
        assert_eq!(read_parquet(&path).unwrap().num_rows(), 1);
    }

    #[test]
    fn missing_column_error_names_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let batch = latent_scores_batch(&rows()).unwrap();
        write_parquet_atomic(&path, &batch).unwrap();
        let back = read_parquet(&path).unwrap();
        let err = string_column(&back, &path, "output_concept").unwrap_err().to_string();
        assert!(err.contains("t.parquet") && err.contains("`output_concept`"), "{err}");
        let err = int64_column(&back, &path, col::METHOD).unwrap_err().to_string();
        assert!(err.contains("`method`") && err.contains("Utf8"), "{err}");
    }

    /// The reference venv's python (scripts/ref-env.sh), or `AXBENCH_REF_PYTHON`.
    fn ref_python() -> Option<PathBuf> {
        let p = std::env::var_os("AXBENCH_REF_PYTHON").map(PathBuf::from).or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cache/axbench-deps/ref-venv/bin/python"))
        })?;
        p.exists().then_some(p)
    }

    #[test]
    fn our_tables_open_in_pandas_pyarrow_polars() {
        let Some(python) = ref_python() else {
            eprintln!("skipping: no reference python (scripts/ref-env.sh)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let scores = dir.path().join("scores.parquet");
        write_parquet_atomic(&scores, &latent_scores_batch(&rows()).unwrap()).unwrap();
        let results = dir.path().join("results.parquet");
        let row = DetectionResultRow {
            model: "gemma-3-270m".into(),
            layer: 9,
            method: "DiffMean".into(),
            concept_id: 0,
            auroc: Some(0.93),
            optimal_threshold: Some(0.41),
            positive_accuracy: None,
            hard_negative_accuracy: None,
            macro_avg_accuracy: None,
            f1: Some(0.88),
            f1_imbalanced: Some(0.31),
            n_positive: 36,
            n_negative: 36,
            n_hard_negative: 0,
        };
        write_parquet_atomic(&results, &detection_results_batch(&[row]).unwrap()).unwrap();
        let script = r#"
import sys, pandas as pd, pyarrow.parquet as pq, polars as pl
s, r = sys.argv[1], sys.argv[2]
df = pd.read_parquet(s)
assert list(df.columns) == ["concept_id", "example_index", "method", "category", "max_act", "max_act_idx", "acts"], df.columns
assert df["method"].tolist() == ["DiffMean", "BoW"]
assert [round(float(x), 3) for x in df["acts"][0]] == [0.1, -0.2, 1.5] and len(df["acts"][1]) == 0
assert pd.isna(df["max_act_idx"][1]) and df["max_act_idx"][0] == 2
t = pq.read_table(r)
assert t.num_rows == 1 and t.column("auroc").to_pylist() == [0.93] and t.column("positive_accuracy").to_pylist() == [None]
p = pl.read_parquet(s)
assert p.shape == (2, 7) and p["category"].to_list() == ["positive", "hard negative"]
print("ok")
"#;
        let out = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&scores)
            .arg(&results)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }

    #[test]
    fn unreadable_file_error_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.parquet");
        std::fs::write(&path, b"not parquet").unwrap();
        let err = read_parquet(&path).unwrap_err().to_string();
        assert!(err.contains("junk.parquet"), "{err}");
    }
}
