//! Training throughput on CPU (issue #9): tokens per second through forward + backward + AdamW for the trained
//! methods on gemma-3-270m, on the same synthetic batches `benches/training/hf_peft_reference.py` feeds HF
//! transformers + peft.
//!
//!   OMP_WAIT_POLICY=PASSIVE cargo bench -p axbench-stages --bench training -- [threads] [steps]
//!
//! Workload: 12 sequences of 128 tokens (32 prompt + 96 response; token ids from a fixed LCG, the same in both
//! programs), batches of 6, loss on the response tokens. Methods: SSV at layer 9 (grad through layers 9..17),
//! LoReFT rank 4 at layers 2/4/6/9 on f5+l5, LoRA rank 4 on o_proj of layers 2/4/6/9 (grad through layers 2..17).
//! One warm-up step, then `steps` timed steps; prints one JSON line per method.

use std::time::Instant;

use axbench_methods::finetune::LoraTrainable;
use axbench_methods::loreft::{Loreft, prompt_positions};
use axbench_methods::ssv::Ssv;
use axbench_models::device::DeviceSpec;
use axbench_models::lora::{Lora, LoraConfig};
use axbench_models::train::{TrainConfig, TrainExample, Trainable, train};
use axbench_models::{LoadOptions, Model};
use tch::Device;

const PROMPT: usize = 32;
const RESPONSE: usize = 96;
const N: usize = 12;
const BATCH: usize = 6;

/// The same ids as the Python side: x_{k+1} = (1103515245 x_k + 12345) mod 2^31, token = 100 + x mod 200000.
fn sequences() -> Vec<Vec<i64>> {
    let mut x: u64 = 42;
    (0..N)
        .map(|_| {
            let mut row = vec![2i64];
            for _ in 1..PROMPT + RESPONSE {
                x = (1103515245 * x + 12345) % (1 << 31);
                row.push(100 + (x % 200_000) as i64);
            }
            row
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4);
    axbench_models::device::set_threads(threads);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/models/gemma-3-270m-q4_k_m.gguf");
    let model = Model::load(
        &path,
        &LoadOptions {
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .expect("gemma-3-270m (scripts/setup.sh)");
    let seqs = sequences();
    let examples = |pos: &dyn Fn(usize) -> Option<Vec<bool>>| -> Vec<TrainExample> {
        seqs.iter()
            .map(|ids| TrainExample {
                ids: ids.clone(),
                response_start: PROMPT,
                intervene: pos(ids.len()),
            })
            .collect()
    };
    let all = |len: usize| Some((0..len).map(|i| i >= 1).collect::<Vec<bool>>());
    let f5l5 = |len: usize| Some(prompt_positions(PROMPT, len, 5, 5));
    let layers = vec![2usize, 4, 6, 9];
    tch::manual_seed(0);
    let ssv = Ssv::new(9, 640, Device::Cpu);
    let loreft = Loreft::new(&layers, 640, 4, Device::Cpu);
    let lora = LoraTrainable(
        Lora::new(
            &model,
            LoraConfig {
                rank: 4,
                alpha: 32.0,
                rslora: true,
                dropout: 0.0,
                layers: layers.clone(),
            },
        )
        .unwrap(),
    );
    let cases: Vec<(&str, &dyn Trainable, Vec<TrainExample>)> = vec![
        ("SSV", &ssv, examples(&all)),
        ("LoReFT", &loreft, examples(&f5l5)),
        ("LoRA", &lora, examples(&|_| None)),
    ];
    for (name, t, ex) in cases {
        let batch = &ex[..BATCH];
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: BATCH,
            lr: 1e-3,
            ..Default::default()
        };
        train(&model, t, batch, &cfg, 0, &mut |_| true).unwrap(); // warm-up
        let t0 = Instant::now();
        let mut tokens = 0;
        for k in 0..steps {
            let b = &ex[(k % (N / BATCH)) * BATCH..][..BATCH];
            tokens += train(&model, t, b, &cfg, 0, &mut |_| true).unwrap().tokens;
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"runtime": "axbench (tch)", "method": name, "threads": threads, "steps": steps, "batch": BATCH, "seq_len": PROMPT + RESPONSE, "tokens": tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs})
        );
    }
}
