//! The GGUF reader: open (header, metadata, tensor infos, bounds checks) then load every tensor
//! it lists. Any bytes must give a file or a `GgufError`, never a panic or a huge allocation.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader maps a path; libFuzzer hands us bytes.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    f.flush().unwrap();
    if let Ok(g) = axbench_models::gguf::GgufFile::open(f.path()) {
        let _ = g.hparams();
        // Dequantize small tensors (the reader's checks, not the fuzzer's memory, are under test).
        for t in g.tensor_infos().iter().filter(|t| t.n_elements <= 1 << 20).take(8) {
            let _ = g.tensor_f32(&t.name);
        }
    }
});
