//! What the test harnesses of several crates share: [`lm_server`], a fault-injecting
//! OpenAI-compatible server (scripted replies, 429s, 500s, truncated JSON, hangs) that the LM
//! client's tests, the pipeline tests and the benchmarks talk to. Never a dependency of a library,
//! only a dev-dependency.

pub mod lm_server;
