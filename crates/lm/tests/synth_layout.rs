//! Our latent-eval synthesis reproduces the layout of AxBench's released Concept10 data
//! (tests/golden/synth/latent_layout.json, made by make_latent_layout_golden.py from the released
//! parquet files): per concept 36 positives in the concept's genre, 26/5/5 text/math/code negatives
//! naming the concept, and one `word//meaning` hard negative per contrast concept in the concept's
//! genre. The number of contrast concepts is the LM's business, so the golden count is fed in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axbench_data::prompts::PromptSet;
use axbench_lm::synth::{Genre, SeedInstructions, SynthReport, Synthesizer, no_truncation};
use axbench_lm::{
    ClientOptions, LmBackend, LmClient, LmSettings, OpenAiBackend, PriceTable, RetryPolicy, SamplingParams,
};
use axbench_testkit::lm_server::{Reply, TestServer};
use rand::SeedableRng;
use serde::Deserialize;

#[derive(Deserialize)]
struct GoldenConcept {
    concept_id: i64,
    genre: Genre,
    counts: BTreeMap<String, usize>,
    negatives_name_the_concept: bool,
    hard_negatives_are_word_meaning: bool,
    hard_negatives_share_concept_genre: bool,
}

#[tokio::test]
async fn latent_eval_layout_matches_released_concept10() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/synth/latent_layout.json");
    let golden: BTreeMap<String, Vec<GoldenConcept>> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let server = TestServer::with_fn(|r| Reply::text(format!("reply {}", r.prompt().len())))
        .await
        .unwrap();
    let settings = LmSettings {
        base_url: server.base_url(),
        timeout_s: 5.0,
        ..Default::default()
    };
    let backend: Arc<dyn LmBackend> = Arc::new(OpenAiBackend::with_api_key(&settings, "sk-test".into()).unwrap());
    let retry = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 1,
        max_delay_ms: 2,
        max_retry_after_ms: 10,
    };
    let client = LmClient::new(
        backend,
        ClientOptions {
            concurrency: 16,
            retry,
            prices: PriceTable::default(),
            cache: None,
        },
    );
    let prompts = PromptSet::load(&PromptSet::default_dir()).unwrap();
    let seeds = SeedInstructions::load(&SeedInstructions::default_path()).unwrap();
    let synth = Synthesizer {
        client: &client,
        prompts: &prompts,
        seeds: &seeds,
        model: "gpt-4o-mini".into(),
        params: SamplingParams::default(),
        truncate: no_truncation(),
    };
    let mut checked = 0;
    for (run, concepts) in &golden {
        for g in concepts {
            let n_hard = g
                .counts
                .iter()
                .filter(|(k, _)| k.starts_with("hard negative/"))
                .map(|(_, n)| n)
                .sum::<usize>();
            let contrasts: Vec<(String, String)> = (0..n_hard)
                .map(|i| (format!("word{i}"), format!("another sense number {i}")))
                .collect();
            let concept = format!("{run} concept {}", g.concept_id);
            let mut rng = rand::rngs::StdRng::seed_from_u64(g.concept_id as u64);
            let mut report = SynthReport::default();
            let rows = synth
                .latent_eval(&concept, g.concept_id, g.genre, 36, &contrasts, &mut rng, &mut report)
                .await
                .unwrap();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for r in &rows {
                *counts.entry(format!("{}/{}", r.category, r.concept_genre)).or_default() += 1;
            }
            assert_eq!(counts, g.counts, "{run} concept {}", g.concept_id);
            let neg_named = rows
                .iter()
                .filter(|r| r.category == "negative")
                .all(|r| r.output_concept == concept);
            let hard: Vec<_> = rows.iter().filter(|r| r.category == "hard negative").collect();
            assert_eq!(neg_named, g.negatives_name_the_concept);
            assert_eq!(
                hard.iter().all(|r| r.output_concept.contains("//")),
                g.hard_negatives_are_word_meaning
            );
            assert_eq!(
                hard.iter().all(|r| r.concept_genre == g.genre.as_str()),
                g.hard_negatives_share_concept_genre
            );
            assert!(
                rows.iter()
                    .all(|r| r.concept_id == g.concept_id && r.dataset_category == "instruction")
            );
            assert_eq!(report, SynthReport::default());
            checked += 1;
        }
    }
    assert_eq!(checked, 30);
}
