//! Throughput of the model runtime on gemma-3-270m (GGUF, dequantized to f32) on the CPU.
//!
//! ```text
//! OMP_WAIT_POLICY=PASSIVE cargo bench -p axbench-models --bench models [-- MODEL.gguf THREADS]
//! ```
//!
//! Prints prefill tokens/s, decode tokens/s at batch 1 and 8 (greedy, KV cache), and activation
//! extraction with an early stop after layer 9 versus a full forward pass with logits. Numbers go
//! into BENCHMARKS.md together with this command.

use std::time::Instant;

use axbench_models::device::{DType, DeviceSpec, set_threads};
use axbench_models::generate::{GenerateConfig, Prompt, generate};
use axbench_models::hooks::{Hooks, Logits};
use axbench_models::{LoadOptions, Model};
use tch::Tensor;

/// Deterministic pseudo-random token ids (ordinary vocabulary range).
fn ids(batch: usize, len: usize, salt: u64) -> Vec<Vec<i64>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ salt;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i == 0 { 2 } else { 1000 + (x % 20000) as i64 }
                })
                .collect()
        })
        .collect()
}

fn tensor(rows: &[Vec<i64>]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

/// Best of `reps` runs, in seconds.
fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f(); // warm-up
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = args
        .first()
        .map(Into::into)
        .unwrap_or_else(|| root.join(".deps/models/gemma-3-270m-q4_k_m.gguf"));
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    set_threads(threads);
    let t = Instant::now();
    let model = Model::load(
        &path,
        &LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: DType::F32,
        },
    )
    .expect("load model");
    println!(
        "model {} ({} layers), {threads} threads, f32, load {:.2}s",
        path.display(),
        model.info().num_layers,
        t.elapsed().as_secs_f64()
    );
    let _g = tch::no_grad_guard();

    // Prefill: one 128-token prompt, logits for the last position (what generation needs).
    let p = tensor(&ids(1, 128, 1));
    let s = best(3, || {
        let mut cache = model.new_cache(1, 128);
        model
            .forward(&p, None, &Hooks::none(), Logits::Last, Some(&mut cache))
            .unwrap();
    });
    println!("prefill            batch 1 x 128: {:8.1} tok/s", 128.0 / s);

    // Decode: greedy, 16-token prompts; rate from the difference between 65 and 1 new tokens.
    for batch in [1usize, 8] {
        let prompts: Vec<Prompt> = ids(batch, 16, 2).into_iter().map(Prompt::from).collect();
        let run = |n: usize| {
            let cfg = GenerateConfig {
                max_new_tokens: n,
                ..Default::default()
            };
            best(2, || {
                generate(&model, &prompts, &cfg, &Hooks::none()).unwrap();
            })
        };
        let (t1, t65) = (run(1), run(65));
        println!(
            "decode             batch {batch}:       {:8.1} tok/s",
            (64 * batch) as f64 / (t65 - t1)
        );
    }

    // Where a decode step goes: one cached step versus the LM head's matrix product alone.
    if std::env::var_os("AXB_BENCH_BREAKDOWN").is_some() {
        for batch in [1i64, 8] {
            let prompt = tensor(&ids(batch as usize, 16, 4));
            let step = best(5, || {
                let mut cache = model.new_cache(batch, 17);
                model
                    .forward(&prompt, None, &Hooks::none(), Logits::Last, Some(&mut cache))
                    .unwrap();
            });
            let h = Tensor::randn(
                [batch, 1, model.info().hidden_size as i64],
                (tch::Kind::Float, tch::Device::Cpu),
            );
            let w = Tensor::randn(
                [model.info().vocab_size as i64, model.info().hidden_size as i64],
                (tch::Kind::Float, tch::Device::Cpu),
            );
            let head_linear = best(5, || {
                let _ = h.linear::<&Tensor>(&w, None);
            });
            let head = best(5, || {
                let _ = axbench_models::layers::project_vocab(&h, &w);
            });
            let one = tensor(&ids(batch as usize, 1, 5));
            let mut cache = model.new_cache(batch, 64);
            model
                .forward(&prompt, None, &Hooks::none(), Logits::Last, Some(&mut cache))
                .unwrap();
            let mut len = 16;
            let dec = best(5, || {
                len += 1;
                let mask = Tensor::ones([batch, len], (tch::Kind::Int64, tch::Device::Cpu));
                model
                    .forward(&one, Some(&mask), &Hooks::none(), Logits::Last, Some(&mut cache))
                    .unwrap();
            });
            println!(
                "  batch {batch}: prefill 16 {:.1} ms, decode step {:.1} ms, LM head alone {:.1} ms \
                 (plain linear {:.1} ms)",
                step * 1e3,
                dec * 1e3,
                head * 1e3,
                head_linear * 1e3
            );
        }
    }

    // Activations at layer 9: early stop versus a full forward with all logits.
    let x = tensor(&ids(8, 64, 3));
    let n = (8 * 64) as f64;
    let early = best(3, || {
        model
            .forward(&x, None, &Hooks::none().capture(9), Logits::None, None)
            .unwrap();
    });
    let full = best(3, || {
        model
            .forward(&x, None, &Hooks::none().capture(9), Logits::All, None)
            .unwrap();
    });
    println!(
        "activations L9     batch 8 x 64:  {:8.1} tok/s (stop after layer 9)",
        n / early
    );
    println!(
        "full forward       batch 8 x 64:  {:8.1} tok/s (all layers + logits)",
        n / full
    );
}
