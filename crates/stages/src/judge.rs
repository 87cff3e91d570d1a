//! `axbench.judge`: AxBench's LM judge (evaluate.py steering, `LMJudgeEvaluator`) over the generations of every
//! steer node bound to it (any input name: `axbench.steer` and `axbench.prompt_steer` nodes alike; a pipeline gathers
//! one concept's methods into one judge node): three calls per generation (concept, instruction, fluency; templates in `configs/prompts/`), each
//! rating read from `Rating: [[n]]` and the score the harmonic mean of the three ([`axbench_lm::judge`]).
//!
//! The judge is an [`LmBackend`](axbench_lm::LmBackend) behind the cached [`LmClient`]: `backend = "local"` runs
//! `model` (default `default-instruct`, SmolLM2-135M-Instruct) in process; `backend = "openai"` calls `base_url`
//! with the key from `$OPENAI_API_KEY` (AxBench: gpt-4o-mini, temperature 0.7). Answers are cached under
//! `cache_dir` (relative to the project), keyed by the full request, so a rerun or another pipeline asking the same
//! question pays nothing.
//!
//! Outputs `judged.parquet` (one row per generation: keys, the three ratings, the score, how many of the three
//! ratings were unreadable, and the generation's perplexity carried over from the steer node) and `judge.json`
//! ([`JudgeMeta`]: rating status counts and client stats).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

use super::generation::{SteerMeta, read_generations};
use super::lm_stage::{LmDefaults, build_lm, check_failed_calls, lm_params, runtime};
use super::{fail, read_json, write_json};
use axbench_data::prompts::PromptSet;
use axbench_data::tables;
use axbench_lm::LmStats;
use axbench_lm::judge::{JudgeItem, JudgeStats, RatingMode, RatingStatus, judge_all_with};

pub struct Judge;

/// The `rating` param the judge and `axbench.prompt_detect` declare.
pub fn rating_param() -> ParamSpec {
    ParamSpec::optional(
        "rating",
        ParamType::Str,
        "generate",
        "generate (AxBench: read `Rating: [[n]]` from a free reply) or constrained (local backend: the most likely of 0/1/2 after a forced `Rating: [[`)",
    )
}

/// The `rating` param of `ctx` ([`rating_param`]).
pub fn rating_mode(ctx: &StageContext) -> Result<RatingMode, StageError> {
    RatingMode::parse(ctx.param_str("rating")?).map_err(|message| StageError::Param {
        name: "rating".into(),
        message,
    })
}

/// One judged generation.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedRow {
    pub concept_id: i64,
    pub method: String,
    pub factor: f64,
    pub input_id: i64,
    pub concept_rating: f64,
    pub instruction_rating: f64,
    pub fluency_rating: f64,
    /// Harmonic mean of the three ratings (0 if any is 0).
    pub score: f64,
    /// Ratings (of 3) that were missing, unparsable, out of range or had no reply.
    pub unparsable: i64,
}

pub fn judged_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("concept_id", DataType::Int64, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("factor", DataType::Float64, false),
        Field::new("input_id", DataType::Int64, false),
        Field::new("concept_rating", DataType::Float64, false),
        Field::new("instruction_rating", DataType::Float64, false),
        Field::new("fluency_rating", DataType::Float64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("unparsable", DataType::Int64, false),
        // The generation's perplexity under the unsteered model, carried from `generations.parquet` (null when
        // the table was written without it, see [`judged_batch`]).
        Field::new("perplexity", DataType::Float64, true),
    ]))
}

/// `judged.parquet` without perplexities (the column is null).
pub fn judged_batch(rows: &[JudgedRow]) -> Result<RecordBatch, StageError> {
    judged_batch_with_perplexity(rows, &vec![None; rows.len()])
}

/// `judged.parquet` with each row's perplexity (`perplexity[k]` belongs to `rows[k]`).
pub fn judged_batch_with_perplexity(rows: &[JudgedRow], perplexity: &[Option<f64>]) -> Result<RecordBatch, StageError> {
    if perplexity.len() != rows.len() {
        return Err(fail(
            "judged",
            format!("{} rows but {} perplexities", rows.len(), perplexity.len()),
        ));
    }
    let f = |g: fn(&JudgedRow) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(g))) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.concept_id))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.method.as_str()))),
        f(|r| r.factor),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.input_id))),
        f(|r| r.concept_rating),
        f(|r| r.instruction_rating),
        f(|r| r.fluency_rating),
        f(|r| r.score),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.unparsable))),
        Arc::new(Float64Array::from(perplexity.to_vec())),
    ];
    RecordBatch::try_new(judged_schema(), columns).map_err(|e| fail("judged", e))
}

/// Reads `judged.parquet`; errors name the file and column.
pub fn read_judged(path: &Path) -> Result<Vec<JudgedRow>, StageError> {
    let batch = tables::read_parquet(path).map_err(|e| fail("judged", e))?;
    let f = |name: &str| -> Result<Float64Array, StageError> {
        let schema = batch.schema();
        let i = schema
            .index_of(name)
            .map_err(|_| fail(path.display(), format!("no column `{name}`")))?;
        batch
            .column(i)
            .as_any()
            .downcast_ref::<Float64Array>()
            .cloned()
            .ok_or_else(|| fail(path.display(), format!("column `{name}` is not float64")))
    };
    let i = |name| tables::int64_column(&batch, path, name).map_err(|e| fail("judged", e));
    let method = tables::string_column(&batch, path, "method").map_err(|e| fail("judged", e))?;
    let (cid, factor, input, c, ins, flu, score, unp) = (
        i("concept_id")?,
        f("factor")?,
        i("input_id")?,
        f("concept_rating")?,
        f("instruction_rating")?,
        f("fluency_rating")?,
        f("score")?,
        i("unparsable")?,
    );
    Ok((0..batch.num_rows())
        .map(|k| JudgedRow {
            concept_id: cid.value(k),
            method: method.value(k).to_owned(),
            factor: factor.value(k),
            input_id: input.value(k),
            concept_rating: c.value(k),
            instruction_rating: ins.value(k),
            fluency_rating: flu.value(k),
            score: score.value(k),
            unparsable: unp.value(k),
        })
        .collect())
}

/// `judge.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeMeta {
    pub concept_id: i64,
    pub concept: String,
    /// The judged methods' AxBench class names, comma-separated in input order (one name for one steer node).
    pub method: String,
    /// The steered model (as the steer nodes name it).
    pub model: String,
    /// The setting's layer: the largest layer of the steer nodes (the prompting baseline, which does not
    /// intervene, records -1 and takes its setting's layer from the others).
    pub layer: i64,
    pub judge: String,
    /// How ratings were produced: `generate` (AxBench: a free reply read for `Rating: [[n]]`) or `constrained`
    /// (the most likely of 0/1/2 after a forced `Rating: [[`, local backend only). Absent in older files: generate.
    #[serde(default)]
    pub rating: RatingMode,
    pub stats: JudgeStats,
    pub calls: LmStats,
}

impl Stage for Judge {
    fn kind(&self) -> &str {
        "axbench.judge"
    }
    fn version(&self) -> u32 {
        2
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![ParamSpec::required(
            "dataset",
            ParamType::Path,
            "AxBench data directory (metadata.jsonl names the concept)",
        )];
        p.extend(lm_params(LmDefaults {
            model: "default-instruct",
            temperature: 0.7,
            max_tokens: 64,
            role: "judge temperature (AxBench: 0.7)",
        }));
        p.push(ParamSpec::optional(
            "prompts",
            ParamType::Path,
            "configs/prompts",
            "prompt template directory",
        ));
        p.push(rating_param());
        p
    }
    fn doc(&self) -> &str {
        "LM-judge ratings (concept, instruction, fluency) and their harmonic mean per steered generation"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        // Every bound artifact of every input, in input-name order: each is a steer node of one concept.
        let mut metas: Vec<SteerMeta> = Vec::new();
        let mut gens = Vec::new();
        for name in ctx.input_names() {
            for art in ctx.inputs(name)? {
                metas.push(read_json(art.file("steer.json")?)?);
                gens.extend(read_generations(art.file("generations.parquet")?)?);
            }
        }
        let Some(first) = metas.first() else {
            return Err(StageError::msg("judge: no steer node is bound to any input"));
        };
        let concept_id = first.concept_id;
        if let Some(other) = metas.iter().find(|m| m.concept_id != concept_id) {
            return Err(StageError::msg(format!(
                "judge: inputs mix concepts {concept_id} and {} (fan the judge out over concept)",
                other.concept_id
            )));
        }
        let metadata = ctx.param_path("dataset")?.join("metadata.jsonl");
        let concepts = axbench_data::dataset::read_metadata(&metadata).map_err(|e| fail("dataset", e))?;
        let concept = concepts
            .iter()
            .find(|c| c.id == concept_id)
            .ok_or_else(|| fail(metadata.display(), format!("no concept {concept_id}")))?
            .concept
            .clone();
        let prompts = PromptSet::load(&ctx.param_path("prompts")?).map_err(|e| fail("prompts", e))?;
        let mode = rating_mode(ctx)?;
        let lm = build_lm(ctx)?;
        let items: Vec<JudgeItem> = gens
            .iter()
            .map(|g| JudgeItem {
                concept: concept.clone(),
                instruction: g.instruction.clone(),
                generation: g.generation.clone(),
            })
            .collect();
        let (judged, stats) = runtime()?
            .block_on(judge_all_with(
                &lm.client,
                &prompts,
                &lm.model_id,
                &lm.params,
                mode,
                &items,
            ))
            .map_err(|e| fail("judge prompts", e))?;
        let rows: Vec<JudgedRow> = gens
            .iter()
            .zip(&judged)
            .map(|(g, j)| JudgedRow {
                concept_id: g.concept_id,
                method: g.method.clone(),
                factor: g.factor,
                input_id: g.input_id,
                concept_rating: j.concept.value,
                instruction_rating: j.instruction.value,
                fluency_rating: j.fluency.value,
                score: j.score,
                unparsable: j.ratings().iter().filter(|r| r.status != RatingStatus::Parsed).count() as i64,
            })
            .collect();
        let calls = lm.client.stats();
        ctx.log(format!(
            "{} generations judged ({} ratings) by {}: {} unreadable ratings, {} failed calls",
            rows.len(),
            mode.as_str(),
            lm.describe,
            stats.unparsable,
            stats.no_reply
        ));
        check_failed_calls(ctx, &calls, &[])?;
        let perplexity: Vec<Option<f64>> = gens.iter().map(|g| Some(g.perplexity)).collect();
        tables::write_parquet_atomic(
            &ctx.output_path("judged.parquet")?,
            &judged_batch_with_perplexity(&rows, &perplexity)?,
        )
        .map_err(|e| fail("judged", e))?;
        let method = metas
            .iter()
            .map(|m| m.method_class.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let layer = metas.iter().map(|m| m.layer).max().unwrap_or(-1);
        write_json(
            ctx,
            "judge.json",
            &JudgeMeta {
                concept_id,
                concept,
                method,
                model: first.model.clone(),
                layer,
                judge: lm.describe,
                rating: mode,
                stats,
                calls,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axbench_engine::{Coord, InputArtifact, Value};

    use super::*;
    use crate::generation::{GenerationRow, SteerMeta, generations_batch};
    use axbench_testkit::lm_server::{Reply, Rules, TestServer};

    fn gen_row(input_id: i64, factor: f64, text: &str) -> GenerationRow {
        GenerationRow {
            concept_id: 0,
            method: "DiffMean".into(),
            factor,
            input_id,
            instruction: format!("instruction {input_id}"),
            generation: text.into(),
            strength: factor * 10.0,
            perplexity: 3.5 + input_id as f64,
        }
    }

    /// Scripted judge: ratings depend on the aspect (template wording) and the generation text.
    fn rules() -> Rules {
        let r = |n: &str| Reply::text(format!("The text is as described. Rating: [[{n}]]"));
        Rules::new()
            .when_all(&["presence of the concept", "GOOD"], move |_| r("2"))
            .when_all(&["topical relatedness", "GOOD"], {
                let r = Reply::text("Rating: [[1]]");
                move |_| r.clone()
            })
            .when_all(&["how fluent", "GOOD"], |_| Reply::text("Rating: [[2]]"))
            .when_all(&["presence of the concept", "BAD"], |_| Reply::text("I cannot decide."))
            .when_all(&["topical relatedness", "BAD"], |_| Reply::text("Rating: [[2]]"))
            .when_all(&["how fluent", "BAD"], |_| Reply::text("Rating: [[7]]"))
    }

    /// A dataset directory naming concept 0 and one steer artifact holding `gens`, under `dir`.
    fn fixture(dir: &Path, gens: &[GenerationRow]) -> (std::path::PathBuf, InputArtifact) {
        let data = dir.join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("metadata.jsonl"), r#"{"concept_id": 0, "concept": "references to cats", "ref": "x", "concept_genres_map": {"references to cats": ["text"]}}"#).unwrap();
        let gp = dir.join("generations.parquet");
        tables::write_parquet_atomic(&gp, &generations_batch(gens).unwrap()).unwrap();
        let meta = SteerMeta {
            model: "m".into(),
            layer: 9,
            concept_id: 0,
            method: "diffmean".into(),
            method_class: "DiffMean".into(),
            max_act: 10.0,
            factors: vec![0.5],
            n_instructions: 2,
            n_generations: gens.len(),
            generated_tokens: 0,
            seconds: 0.0,
            skipped: None,
        };
        let sp = dir.join("steer.json");
        std::fs::write(&sp, serde_json::to_vec(&meta).unwrap()).unwrap();
        (
            data,
            InputArtifact {
                node: "steer".into(),
                coord: Coord::new(),
                files: [("generations.parquet".to_string(), gp), ("steer.json".to_string(), sp)]
                    .into_iter()
                    .collect(),
            },
        )
    }

    /// The judge's params: the LM at `backend`/`model`/`base_url`, ratings in `rating` mode.
    fn judge_params(data: &Path, backend: &str, model: &str, base_url: &str, rating: &str) -> BTreeMap<String, Value> {
        [
            ("dataset", Value::Str(data.display().to_string())),
            ("backend", Value::Str(backend.into())),
            ("model", Value::Str(model.into())),
            ("base_url", Value::Str(base_url.into())),
            ("temperature", Value::Float(0.7)),
            ("max_tokens", Value::Int(0)),
            ("seed", Value::Int(0)),
            ("prompts", Value::Str(PromptSet::default_dir().display().to_string())),
            ("cache_dir", Value::Str("lm_cache".into())),
            ("concurrency", Value::Int(4)),
            ("rating", Value::Str(rating.into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs the judge over `art` into `dir/out_name`; returns the rows and `judge.json`.
    fn run_judge(
        dir: &Path,
        out_name: &str,
        params: &BTreeMap<String, Value>,
        art: &InputArtifact,
    ) -> Result<(Vec<JudgedRow>, serde_json::Value), StageError> {
        let out = dir.join(out_name);
        std::fs::create_dir(&out).unwrap();
        let mut ctx = StageContext::new(
            "judge",
            Coord::new(),
            params.clone(),
            [("generations".to_string(), vec![art.clone()])].into_iter().collect(),
            out.clone(),
            dir.to_path_buf(),
        );
        Judge.run(&mut ctx)?;
        let meta = serde_json::from_slice(&std::fs::read(out.join("judge.json")).unwrap()).unwrap();
        Ok((read_judged(&out.join("judged.parquet")).unwrap(), meta))
    }

    /// Constrained ratings through the local SmolLM2 judge: every rating is read, and judge.json says the mode.
    #[test]
    fn constrained_local_judge_leaves_no_rating_unreadable() {
        let tmp = tempfile::tempdir().unwrap();
        let gens = [
            gen_row(0, 0.5, "Cats are small furry animals that purr and chase mice."),
            gen_row(1, 1.0, "the the the of of and and"),
        ];
        let (data, art) = fixture(tmp.path(), &gens);
        let params = judge_params(&data, "local", "default-instruct", "", "constrained");
        let (rows, meta) = match run_judge(tmp.path(), "out", &params, &art) {
            Ok(r) => r,
            Err(StageError::Param { name, message }) if name == "model" => return eprintln!("skipping: {message}"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.unparsable, 0, "{r:?}");
            for v in [r.concept_rating, r.instruction_rating, r.fluency_rating] {
                assert!([0.0, 1.0, 2.0].contains(&v), "{r:?}");
            }
        }
        assert_eq!(
            (
                meta["rating"].as_str(),
                meta["stats"]["unparsable"].as_u64(),
                meta["stats"]["no_reply"].as_u64()
            ),
            (Some("constrained"), Some(0), Some(0)),
            "{meta}"
        );
    }

    /// The OpenAI backend cannot score choices: constrained calls fail per call (counted as no reply, rated 0)
    /// without reaching the server, and a bad mode is a param error.
    #[test]
    fn constrained_ratings_are_refused_by_the_openai_backend() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(TestServer::with_rules(rules())).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (data, art) = fixture(tmp.path(), &[gen_row(0, 0.5, "a GOOD text")]);
        // SAFETY: as in the scripted test; every test that sets it sets the same value.
        unsafe { std::env::set_var("OPENAI_API_KEY", "test-key") };
        let (rows, meta) = run_judge(
            tmp.path(),
            "out",
            &judge_params(&data, "openai", "gpt-4o-mini", &server.base_url(), "constrained"),
            &art,
        )
        .unwrap();
        assert_eq!((rows[0].score, rows[0].unparsable), (0.0, 3));
        assert_eq!(
            (meta["rating"].as_str(), meta["stats"]["no_reply"].as_u64()),
            (Some("constrained"), Some(3)),
            "{meta}"
        );
        assert_eq!(server.requests(), 0);
        let e = run_judge(
            tmp.path(),
            "out2",
            &judge_params(&data, "openai", "gpt-4o-mini", &server.base_url(), "sampled"),
            &art,
        )
        .unwrap_err();
        assert!(matches!(&e, StageError::Param { name, .. } if name == "rating"), "{e}");
    }

    #[test]
    fn judge_stage_rates_through_the_lm_client_with_scripted_ratings() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(TestServer::with_rules(rules())).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let gens = [gen_row(0, 0.5, "a GOOD text"), gen_row(1, 0.5, "a BAD text")];
        let (data, art) = fixture(tmp.path(), &gens);
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let params = judge_params(&data, "openai", "gpt-4o-mini", &server.base_url(), "generate");
        // SAFETY: set before any thread of this test reads it; other tests do not read this variable.
        unsafe { std::env::set_var("OPENAI_API_KEY", "test-key") };
        let run = |out: &Path| {
            let mut ctx = StageContext::new(
                "judge",
                Coord::new(),
                params.clone(),
                [("generations".to_string(), vec![art.clone()])].into_iter().collect(),
                out.to_path_buf(),
                tmp.path().to_path_buf(),
            );
            Judge.run(&mut ctx).unwrap();
            read_judged(&out.join("judged.parquet")).unwrap()
        };
        let rows = run(&out);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].concept_rating,
                rows[0].instruction_rating,
                rows[0].fluency_rating
            ),
            (2.0, 1.0, 2.0)
        );
        assert!(
            (rows[0].score - 1.5).abs() < 1e-12,
            "harmonic mean of 2, 1, 2 = 1.5, got {}",
            rows[0].score
        );
        assert_eq!(rows[0].unparsable, 0);
        // Missing rating and an out-of-range 7 both count as 0 and as unreadable; any 0 makes the score 0.
        assert_eq!(
            (
                rows[1].concept_rating,
                rows[1].instruction_rating,
                rows[1].fluency_rating,
                rows[1].score,
                rows[1].unparsable
            ),
            (0.0, 2.0, 0.0, 0.0, 2)
        );
        assert_eq!(server.requests(), 6);
        // Each row carries its generation's perplexity from generations.parquet.
        let batch = tables::read_parquet(&out.join("judged.parquet")).unwrap();
        let ppl = batch
            .column(batch.schema().index_of("perplexity").unwrap())
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        assert_eq!((ppl.value(0), ppl.value(1)), (3.5, 4.5));
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("judge.json")).unwrap()).unwrap();
        assert_eq!(meta["concept"], "references to cats");
        assert_eq!(
            (meta["method"].as_str(), meta["model"].as_str(), meta["layer"].as_i64()),
            (Some("DiffMean"), Some("m"), Some(9))
        );
        assert_eq!(meta["stats"]["unparsable"], 2);
        assert_eq!(meta["rating"], "generate");

        // A rerun is answered from the LM cache: same rows, no new requests.
        let out2 = tmp.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        assert_eq!(run(&out2), rows);
        assert_eq!(server.requests(), 6);
    }
}
