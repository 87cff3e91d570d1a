//! The pipeline TOML loader: any text must give a spec or a `SpecError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = axbench_engine::spec::PipelineSpec::parse("fuzz.toml", text);
    }
});
