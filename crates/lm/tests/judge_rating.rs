//! The judge: rating parser against golden values from a Python re-statement of AxBench's rule
//! (tests/golden/judge/make_rating_golden.py), extra malformed variants, and the three-call judge
//! over real HTTP with the harmonic-mean score.

use std::path::Path;
use std::sync::Arc;

use axbench_data::prompts::PromptSet;
use axbench_lm::judge::{JudgeItem, RatingStatus, judge_all, judge_prompts, parse_rating};
use axbench_lm::{
    ClientOptions, LmBackend, LmClient, LmSettings, OpenAiBackend, PriceTable, RetryPolicy, SamplingParams,
};
use axbench_testkit::lm_server::{Fault, Reply, Rules, TestServer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    completion: String,
    value: f64,
    status: String,
}

fn status_name(s: RatingStatus) -> &'static str {
    match s {
        RatingStatus::Parsed => "parsed",
        RatingStatus::Missing => "missing",
        RatingStatus::Unparsable => "unparsable",
        RatingStatus::OutOfRange => "out_of_range",
        RatingStatus::NoReply => "no_reply",
    }
}

#[test]
fn parser_matches_python_reference_on_every_golden_case() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/judge/rating_cases.json");
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(cases.len() >= 40);
    for c in &cases {
        let r = parse_rating(&c.completion);
        assert_eq!(r.value, c.value, "value of {:?}", c.completion);
        assert_eq!(status_name(r.status), c.status, "status of {:?}", c.completion);
    }
}

/// Table of malformed variants, with what AxBench's rule makes of them.
#[test]
fn malformed_ratings_table() {
    let table: &[(&str, f64, RatingStatus)] = &[
        ("Rating: [[2]]", 2.0, RatingStatus::Parsed),
        ("Rating: [[1]]  ", 1.0, RatingStatus::Parsed),
        ("  Rating:   [[0]]  \n\n", 0.0, RatingStatus::Parsed),
        ("Rating: [[1]]\n\nRating: [[5]]", 0.0, RatingStatus::OutOfRange),
        ("Rating: [[2]] (strong)", 0.0, RatingStatus::Unparsable),
        ("Rating: [[two]]", 0.0, RatingStatus::Unparsable),
        ("Rating: [[1/2]]", 0.0, RatingStatus::Unparsable),
        ("Rating: [[ ]]", 0.0, RatingStatus::Unparsable),
        ("Rating: [[2]", 2.0, RatingStatus::Parsed),
        ("Rating: 2]]", 2.0, RatingStatus::Parsed),
        ("Rating: [[-0]]", 0.0, RatingStatus::Parsed),
        ("Rating: [[2e0]]", 2.0, RatingStatus::Parsed),
        ("Rating: [[1e1]]", 0.0, RatingStatus::OutOfRange),
        ("Rating: [[-inf]]", 0.0, RatingStatus::OutOfRange),
        ("Rating: [[NaN]]", 0.0, RatingStatus::OutOfRange),
        ("Rating: [[1__0]]", 0.0, RatingStatus::Unparsable),
        ("Rating: [[_1]]", 0.0, RatingStatus::Unparsable),
        ("Rating: [[++1]]", 0.0, RatingStatus::Unparsable),
        ("Rating: [[1.5.]]", 1.5, RatingStatus::Parsed),
        ("Rating: \"[[2]]\"", 2.0, RatingStatus::Parsed),
        ("Score: [[2]]", 0.0, RatingStatus::Missing),
        ("rating: [[2]]", 0.0, RatingStatus::Missing),
        ("[[2]]", 0.0, RatingStatus::Missing),
    ];
    for (text, value, status) in table {
        let r = parse_rating(text);
        assert_eq!((r.value, r.status), (*value, *status), "{text:?}");
    }
}

#[test]
fn every_judge_prompt_asks_for_the_parsed_format() {
    let prompts = PromptSet::load(&PromptSet::default_dir()).unwrap();
    let item = JudgeItem {
        concept: "c".into(),
        instruction: "i".into(),
        generation: "g".into(),
    };
    for p in judge_prompts(&prompts, &item).unwrap() {
        assert!(p.contains("Rating: [[score]]"), "{p}");
    }
}

#[tokio::test]
async fn judge_all_rates_three_aspects_over_http() {
    // Replies keyed on each judge template's wording and on the generation text.
    let rules = Rules::new()
        .when_all(&["how clearly the concept below is present", "GOOD"], |_| {
            Reply::text("Clearly there.\nRating: [[2]]")
        })
        .when_all(&["how clearly the concept below is present", "MEH"], |_| {
            Reply::text("Faint.\nRating: [[1]]")
        })
        .when_all(&["how clearly the concept below is present", "BROKEN"], |_| {
            Reply::text("I'd say two.")
        })
        .when_all(&["how clearly the concept below is present", "FAIL"], |_| {
            Reply::Fault(Fault::ServerError(500))
        })
        .when("on the topic of the", Reply::text("On topic. Rating: [[2]]"))
        .when("how fluent the text", Reply::text("Fine.\nRating: [[1]]"));
    let server = TestServer::with_rules(rules).await.unwrap();
    let settings = LmSettings {
        base_url: server.base_url(),
        timeout_s: 2.0,
        ..Default::default()
    };
    let backend: Arc<dyn LmBackend> = Arc::new(OpenAiBackend::with_api_key(&settings, "sk-x".into()).unwrap());
    let retry = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 1,
        max_delay_ms: 2,
        max_retry_after_ms: 10,
    };
    let client = LmClient::new(
        backend,
        ClientOptions {
            concurrency: 4,
            retry,
            prices: PriceTable::default(),
            cache: None,
        },
    );
    let prompts = PromptSet::load(&PromptSet::default_dir()).unwrap();
    let items: Vec<JudgeItem> = ["GOOD", "MEH", "BROKEN", "FAIL"]
        .iter()
        .map(|g| JudgeItem {
            concept: "sports statistics".into(),
            instruction: "Tell me a joke".into(),
            generation: format!("{g} text"),
        })
        .collect();
    let params = SamplingParams {
        temperature: Some(0.7),
        ..Default::default()
    };
    let (judged, stats) = judge_all(&client, &prompts, "gpt-4o-mini", &params, &items)
        .await
        .unwrap();
    let scores: Vec<f64> = judged.iter().map(|j| j.score).collect();
    // GOOD: (2, 2, 1) -> 3 / (1/2 + 1/2 + 1) = 1.5; MEH: (1, 2, 1) -> 3 / 2.5 = 1.2; the rest 0.
    assert!((scores[0] - 1.5).abs() < 1e-12, "{scores:?}");
    assert!((scores[1] - 1.2).abs() < 1e-12, "{scores:?}");
    assert_eq!(&scores[2..], &[0.0, 0.0]);
    assert_eq!(judged[2].concept.status, RatingStatus::Missing);
    assert_eq!(judged[3].concept.status, RatingStatus::NoReply);
    assert_eq!(judged[0].completions[0], "Clearly there.\nRating: [[2]]");
    assert_eq!((stats.items, stats.unparsable, stats.no_reply), (4, 1, 1));
    assert_eq!(stats.statuses["fluency"]["parsed"], 4);
    // 4 items x 3 aspects, plus one retry of the failing call.
    assert_eq!(server.requests(), 13);
}
