//! AxBench's synthesis procedure end to end over real HTTP against the scripted test server:
//! genres, shared negatives from the "steered" model, training positives, contrast concepts and
//! the latent eval set, with failures counted and reruns served from the cache.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axbench_data::prompts::PromptSet;
use axbench_lm::synth::{
    Concept, EMPTY_CONCEPT, Genre, ResponseGenerator, SeedInstructions, Split, SynthConfig, SynthReport, Synthesizer,
    fallback_steering_prompt, load_concepts, synthesize, truncate_words,
};
use axbench_lm::{
    BoxFuture, ClientOptions, LmBackend, LmCache, LmClient, LmSettings, OpenAiBackend, PriceTable, RetryPolicy,
    SamplingParams,
};
use axbench_testkit::lm_server::{Fault, Reply, Rules, TestServer};

const EMPLOYMENT: &str = "terms related to employment and employees";
const LISTCOMP: &str = "Python list comprehensions";

/// The model "to be steered": answers locally, no LM involved.
struct LocalModel;

impl ResponseGenerator for LocalModel {
    fn generate<'a>(&'a self, instructions: &'a [String]) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move { Ok(instructions.iter().map(|i| format!("local reply to {i}")).collect()) })
    }
}

fn cleaned(s: &str) -> String {
    s.trim_matches([' ', '.', '\'']).trim_matches('"').to_string()
}

fn script(math_test: HashSet<String>) -> Rules {
    Rules::new()
        // Genre.
        .when_all(&["Which single kind of writing", LISTCOMP], |_| Reply::text("Code"))
        .when("Which single kind of writing", Reply::text("Text"))
        // Related words, then other meanings, then the filter.
        .when_all(&["List up to 10 common English words", EMPLOYMENT], |_| {
            Reply::text("union\nwage\n\n shift \n<NONE>")
        })
        .when("List up to 10 common English words", Reply::text("<NONE>"))
        .when(
            "Here is a word:\n\nunion\n",
            Reply::text("the act of joining two things together"),
        )
        .when("Here is a word:\n\nwage\n", Reply::text("<NONE>"))
        .when(
            "Here is a word:\n\nshift\n",
            Reply::text("a key on a computer keyboard"),
        )
        .when("Here is a word:\n\n", Reply::text("none"))
        .when_all(&["truly separate", "joining two things"], |_| {
            Reply::text("Nothing in common.\nAnswer: <YES>")
        })
        .when_all(&["truly separate", "keyboard"], |_| {
            Reply::text("One might answer yes at first, but shifts are work periods.\nAnswer: <NO>")
        })
        // Responses.
        .when_all(&["brings in elements of the following concept"], |r| {
            if r.prompt().contains(LISTCOMP) {
                Reply::text("POS-CODE a b c d e f g")
            } else {
                Reply::text(" 'POS one two three four five six seven' ")
            }
        })
        .when_all(&["Stay completely away", LISTCOMP], move |r| {
            // Fail every math negative of the code concept: bounded retries, then dropped.
            if math_test
                .iter()
                .any(|m| r.prompt().contains(&format!("instruction:\n\n{m}\n")))
            {
                Reply::Fault(Fault::ServerError(500))
            } else {
                Reply::text("NEG plain answer one two three four")
            }
        })
        .when(
            "Stay completely away",
            Reply::text("NEG plain answer one two three four"),
        )
        .when(
            "in the sense of: the act of joining",
            Reply::text("<FINAL> The union of two rivers forms a delta."),
        )
}

fn client(server: &TestServer, cache: &Path) -> LmClient {
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
    LmClient::new(
        backend,
        ClientOptions {
            concurrency: 8,
            retry,
            prices: PriceTable::default(),
            cache: Some(LmCache::open(cache).unwrap()),
        },
    )
}

#[tokio::test]
async fn whole_procedure_against_scripted_server() {
    let seeds = SeedInstructions::load(&SeedInstructions::default_path()).unwrap();
    let math_test: HashSet<String> = seeds
        .pool(Genre::Math, Split::Test)
        .iter()
        .map(|s| cleaned(s))
        .collect();
    let server = TestServer::with_rules(script(math_test)).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let prompts = PromptSet::load(&PromptSet::default_dir()).unwrap();
    let concepts = vec![
        Concept {
            description: EMPLOYMENT.into(),
            reference: "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7490".into(),
        },
        Concept {
            description: LISTCOMP.into(),
            reference: "null".into(),
        },
    ];
    let config = SynthConfig {
        num_of_examples: 20,
        latent_num_of_examples: 36,
        seed: 42,
    };
    let lm = client(&server, cache.path());
    let synth = Synthesizer {
        client: &lm,
        prompts: &prompts,
        seeds: &seeds,
        model: "gpt-4o-mini".into(),
        params: SamplingParams {
            temperature: Some(1.0),
            ..Default::default()
        },
        truncate: truncate_words(5),
    };
    let out = synthesize(&synth, &LocalModel, &concepts, &config).await.unwrap();

    // Training data: the shared negatives first (10 per genre: text, math, code), then positives.
    assert_eq!(out.train.len(), 30 + 10 + 10);
    for (i, g) in ["text", "math", "code"].iter().enumerate() {
        let block = &out.train[i * 10..(i + 1) * 10];
        assert!(block.iter().all(|r| r.concept_genre == *g && r.category == "negative"));
        assert!(
            block
                .iter()
                .all(|r| r.output_concept == EMPTY_CONCEPT && r.concept_id == -1)
        );
        assert!(block.iter().all(|r| r.output == format!("local reply to {}", r.input)));
    }
    let pos0: Vec<_> = out.train.iter().filter(|r| r.concept_id == 0).collect();
    let pos1: Vec<_> = out.train.iter().filter(|r| r.concept_id == 1).collect();
    assert_eq!((pos0.len(), pos1.len()), (10, 10));
    let text_train: HashSet<String> = seeds
        .pool(Genre::Text, Split::Train)
        .iter()
        .map(|s| cleaned(s))
        .collect();
    let code_train: HashSet<String> = seeds
        .pool(Genre::Code, Split::Train)
        .iter()
        .map(|s| cleaned(s))
        .collect();
    for r in &pos0 {
        assert!(
            text_train.contains(&r.input),
            "{} is not a text train instruction",
            r.input
        );
        assert_eq!(
            (r.category.as_str(), r.concept_genre.as_str(), r.output_concept.as_str()),
            ("positive", "text", EMPLOYMENT)
        );
        // Reply cleaned of quotes/spaces, then cut to 5 words.
        assert_eq!(r.output, "POS one two three four");
        assert_eq!(r.dataset_category, "instruction");
    }
    for r in &pos1 {
        assert!(code_train.contains(&r.input));
        assert_eq!(
            (r.concept_genre.as_str(), r.output.as_str()),
            ("code", "POS-CODE a b c d")
        );
    }
    assert_eq!(
        pos0.iter().map(|r| &r.input).collect::<HashSet<_>>().len(),
        10,
        "instructions drawn without replacement"
    );

    // Latent eval, concept 0: 36 positives, 26/5/5 negatives, one hard negative ("union" passed
    // the filter; "wage" and "<NONE>" had no other meaning; "shift" overlapped).
    let eval0: Vec<_> = out.latent_eval.iter().filter(|r| r.concept_id == 0).collect();
    let count = |rows: &[&axbench_lm::synth::Row], cat: &str, genre: &str| {
        rows.iter()
            .filter(|r| r.category == cat && r.concept_genre == genre)
            .count()
    };
    assert_eq!(count(&eval0, "positive", "text"), 36);
    assert_eq!(
        (
            count(&eval0, "negative", "text"),
            count(&eval0, "negative", "math"),
            count(&eval0, "negative", "code")
        ),
        (26, 5, 5)
    );
    let hard: Vec<_> = eval0.iter().filter(|r| r.category == "hard negative").collect();
    assert_eq!(hard.len(), 1);
    assert_eq!(hard[0].output_concept, "union//the act of joining two things together");
    assert_eq!(hard[0].output, "The union of two rivers");
    assert_eq!(hard[0].concept_genre, "text");
    // Negatives keep the concept as output_concept (AxBench's eval df does).
    assert!(
        eval0
            .iter()
            .filter(|r| r.category == "negative")
            .all(|r| r.output_concept == EMPLOYMENT)
    );
    // The hard negative's instruction is a test instruction not used by a positive.
    let pos_inputs: HashSet<&String> = eval0
        .iter()
        .filter(|r| r.category == "positive")
        .map(|r| &r.input)
        .collect();
    assert!(!pos_inputs.contains(&hard[0].input));
    assert_eq!(pos_inputs.len(), 36);

    // Concept 1 (code): its 5 math negatives failed twice each and were dropped and counted.
    let eval1: Vec<_> = out.latent_eval.iter().filter(|r| r.concept_id == 1).collect();
    assert_eq!(count(&eval1, "positive", "code"), 36);
    assert_eq!(
        (
            count(&eval1, "negative", "text"),
            count(&eval1, "negative", "math"),
            count(&eval1, "negative", "code")
        ),
        (26, 0, 5)
    );
    assert_eq!(eval1.iter().filter(|r| r.category == "hard negative").count(), 0);
    assert_eq!(out.report.failed_calls, 5);
    assert_eq!(out.report.missing_seed_instructions, 0);

    // Metadata lines.
    assert_eq!(out.metadata.len(), 2);
    assert_eq!(out.metadata[1].concept_genres_map[LISTCOMP], vec![Genre::Code]);
    let line = serde_json::to_string(&out.metadata[0]).unwrap();
    assert!(line.starts_with(r#"{"concept_id":0,"concept":"terms related to employment and employees","ref":"https://www.neuronpedia.org/"#), "{line}");

    // A rerun with the same seed is identical and pays only for what failed before.
    let served = server.requests();
    let lm2 = client(&server, cache.path());
    let synth2 = Synthesizer { client: &lm2, ..synth };
    let again = synthesize(&synth2, &LocalModel, &concepts, &config).await.unwrap();
    assert_eq!(again.train, out.train);
    assert_eq!(again.latent_eval, out.latent_eval);
    assert_eq!(
        server.requests() - served,
        10,
        "only the 5 failed calls (2 attempts each) are retried"
    );
    assert_eq!(lm2.stats().cache_hits, lm.stats().completed + lm.stats().cache_hits);
}

#[test]
fn concept_files_load_with_axbench_rules() {
    let dir = tempfile::tempdir().unwrap();
    // Neuronpedia export: duplicate indices keep the first description.
    let json = dir.path().join("concepts.json");
    std::fs::write(
        &json,
        r#"[{"modelId":"gemma-2-2b","layer":"20-gemmascope-res-16k","index":"7490","description":" employment terms ","explanationModelName":"x"},
            {"modelId":"gemma-2-2b","layer":"20-gemmascope-res-16k","index":"7490","description":"second take"},
            {"modelId":"gemma-2-2b","layer":"20-gemmascope-res-16k","index":56,"description":"beliefs and religion"}]"#,
    )
    .unwrap();
    let c = load_concepts(&json).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].description, "employment terms");
    assert_eq!(
        c[0].reference,
        "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7490"
    );
    assert_eq!(
        c[1].reference,
        "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/56"
    );

    // concept,url csv (the demo's format), with a quoted comma.
    let csv = dir.path().join("concepts.csv");
    std::fs::write(
        &csv,
        "terms related to artificiality and deception,https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/8927\n\"sports, statistics\",https://x/1\n",
    )
    .unwrap();
    let c = load_concepts(&csv).unwrap();
    assert_eq!(c[0].description, "terms related to artificiality and deception");
    assert_eq!(c[1].description, "sports, statistics");
    assert_eq!(c[1].reference, "https://x/1");

    let txt = dir.path().join("concepts.txt");
    std::fs::write(&txt, "first concept\n\nsecond concept\n").unwrap();
    let c = load_concepts(&txt).unwrap();
    assert_eq!(
        c.iter().map(|c| c.description.as_str()).collect::<Vec<_>>(),
        ["first concept", "second concept"]
    );
    assert!(c.iter().all(|c| c.reference == "null"));
}

#[test]
fn bad_concept_files_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bad.json");
    std::fs::write(&json, r#"[{"modelId":"m","layer":"l","index":"1"}]"#).unwrap();
    let e = load_concepts(&json).unwrap_err().to_string();
    assert!(
        e.contains("bad.json") && e.contains("entry 0") && e.contains("description"),
        "{e}"
    );

    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "only a concept\n").unwrap();
    let e = load_concepts(&csv).unwrap_err().to_string();
    assert!(e.contains("bad.csv") && e.contains("line 1"), "{e}");

    let txt = dir.path().join("urls.txt");
    std::fs::write(&txt, "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/1\n").unwrap();
    let e = load_concepts(&txt).unwrap_err().to_string();
    assert!(e.contains("urls.txt") && e.contains("Neuronpedia"), "{e}");

    let e = load_concepts(&dir.path().join("c.parquet")).unwrap_err().to_string();
    assert!(e.contains("c.parquet"), "{e}");

    let seeds = dir.path().join("seeds.jsonl");
    std::fs::write(&seeds, "{\"genre\":\"text\",\"split\":\"train\",\"instruction\":\"ok\"}\n{\"genre\":\"poetry\",\"split\":\"train\",\"instruction\":\"x\"}\n").unwrap();
    let e = SeedInstructions::load(&seeds).unwrap_err().to_string();
    assert!(
        e.contains("seeds.jsonl") && e.contains("line 2") && e.contains("poetry"),
        "{e}"
    );
}

#[test]
fn shipped_seed_instructions_cover_every_pool() {
    let seeds = SeedInstructions::load(&SeedInstructions::default_path()).unwrap();
    for g in [Genre::Text, Genre::Code, Genre::Math] {
        assert!(seeds.pool(g, Split::Train).len() >= 40, "{g:?} train");
        // 36 latent positives + up to 10 hard negatives come from one genre's test pool.
        assert!(seeds.pool(g, Split::Test).len() >= 46, "{g:?} test");
        let all: HashSet<&String> = seeds
            .pool(g, Split::Train)
            .iter()
            .chain(seeds.pool(g, Split::Test))
            .collect();
        assert_eq!(
            all.len(),
            seeds.pool(g, Split::Train).len() + seeds.pool(g, Split::Test).len(),
            "{g:?}: duplicates"
        );
    }
}

#[tokio::test]
async fn steering_prompts_fall_back_when_the_lm_fails_or_is_empty() {
    let server = TestServer::with_rules(
        Rules::new()
            .when(
                "Goal: the model must bring content about the following concept into its answers: rivers",
                Reply::text("  You love rivers.  "),
            )
            .when("answers: deserts", Reply::text(" "))
            .when("answers: glaciers", Reply::Fault(Fault::ServerError(500))),
    )
    .await
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let lm = client(&server, cache.path());
    let prompts = PromptSet::load(&PromptSet::default_dir()).unwrap();
    let seeds = SeedInstructions::default();
    let synth = Synthesizer {
        client: &lm,
        prompts: &prompts,
        seeds: &seeds,
        model: "gpt-4o-mini".into(),
        params: SamplingParams::default(),
        truncate: truncate_words(5),
    };
    let concepts = ["rivers".to_string(), "deserts".to_string(), "glaciers".to_string()];
    let mut report = SynthReport::default();
    let got = synth.steering_prompts(&concepts, &mut report).await.unwrap();
    assert_eq!(got[0], "You love rivers.");
    assert_eq!(got[1], fallback_steering_prompt("deserts"));
    assert_eq!(got[2], fallback_steering_prompt("glaciers"));
    assert!(got[2].contains("glaciers"));
    assert_eq!(report.failed_calls, 1);
}
