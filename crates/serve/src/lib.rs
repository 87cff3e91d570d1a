//! An OpenAI-compatible HTTP server for (steered) models run by `axbench-models` (the only
//! axbench crate it imports).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both with SSE streaming and
//! log-probabilities), `GET /v1/models`, `GET /health` (with batching counters), and llama.cpp's
//! `POST /tokenize` / `POST /detokenize`. Everything but `/health` requires the bearer token when
//! one is configured.
//!
//! Steering is a request extension: `"steering": {"vector": NAME, "factor": X}` adds
//! `X * d / |d|` to the output of the vector's layer at every position (prompt and generated),
//! where `d` is vector `NAME` from a file given with `--vectors` (see
//! [`axbench_models::vectors`] for the file formats and layer numbering). Factor 0 is exactly the
//! unsteered model.
//!
//! Requests are batched by one model worker ([`engine`]); generation is the same
//! [`axbench_models::generate::generate_with`] the steer stage uses.
//!
//! ```no_run
//! # async fn f() -> Result<(), axbench_serve::ServeError> {
//! let path = axbench_models::open::resolve_model("default-instruct").unwrap();
//! let server = axbench_serve::start(axbench_serve::ServerConfig::new(path), "127.0.0.1:0".parse().unwrap()).await?;
//! println!("listening on {}", server.addr);
//! server.wait().await.ok();
//! # Ok(()) }
//! ```

pub mod api;
pub mod engine;
pub mod server;
mod text;

pub use engine::{EngineOptions, Stats};
pub use server::{RunningServer, ServeError, ServerConfig, start};
