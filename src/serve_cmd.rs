//! `axbench serve`: the OpenAI-compatible steering server (crate `axbench-serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::model::LoadOptions;
use axbench_serve::{EngineOptions, ServerConfig};
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_long_help = "Steering: add `\"steering\": {\"vector\": NAME, \"factor\": X}` to a request body to add
X * d/|d| to the output of the vector's layer (d = vector NAME from --vectors).

Examples:
  axbench serve --model default-instruct
  axbench serve --model default --vectors concepts.safetensors --port 8080
  AXBENCH_KEY=secret axbench serve --model default-instruct --api-key-env AXBENCH_KEY"
)]
pub struct ServeArgs {
    /// `default` (Gemma 3 270M GGUF), `default-instruct` (SmolLM2-135M-Instruct GGUF), an HF
    /// model directory or a .gguf file
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Steering-vector file (.safetensors from AxBench methods, or a GGUF control vector); repeatable
    #[arg(long = "vectors", value_name = "FILE")]
    pub vectors: Vec<PathBuf>,
    /// Address to bind (only loopback unless you mean it)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0 picks a free one; the address is printed)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Name of an environment variable holding the bearer token clients must send
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// cpu, cuda, cuda:N or auto
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// f32 or bf16
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Name reported by /v1/models [default: the model's file name]
    #[arg(long, value_name = "NAME")]
    pub model_id: Option<String>,
    /// Cap on prompt + max_tokens [default: the model's context length]
    #[arg(long, value_name = "TOKENS")]
    pub ctx_size: Option<usize>,
    /// How long the worker waits for more requests before starting a batch
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub batch_window_ms: u64,
    /// Most rows in one batch
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// CPU threads for libtorch [default: libtorch's choice]
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let model = axbench_models::open::resolve_model(&a.model).map_err(anyhow::Error::msg)?;
    let api_key = match &a.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => bail!("--api-key-env {var}: the environment variable is unset or empty"),
        },
    };
    if a.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let cfg = ServerConfig {
        model,
        model_id: a.model_id,
        vectors: a.vectors,
        load: LoadOptions {
            device: a.device,
            dtype: a.dtype,
        },
        api_key,
        engine: EngineOptions {
            batch_window: Duration::from_millis(a.batch_window_ms),
            max_batch: a.max_batch,
            threads: a.threads,
        },
        context_length: a.ctx_size,
    };
    let addr = SocketAddr::new(a.host, a.port);
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let server = axbench_serve::start(cfg, addr).await?;
        // Printed (not logged) so scripts can read the port when --port 0.
        println!("listening on http://{}", server.addr);
        tokio::select! {
            r = server.wait() => r.context("server failed"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
