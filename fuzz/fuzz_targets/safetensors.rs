//! safetensors loading as `axbench model` does it (`Weights::from_hf_dir`), then every tensor the
//! header names fetched with its declared shape: any bytes must give tensors or a `ModelError`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), data).unwrap();
    let Ok(w) = axbench_models::weights::Weights::from_hf_dir(dir.path(), tch::Kind::Float, tch::Device::Cpu) else {
        return;
    };
    // The names and shapes as the header states them (the loader exposes lookups, not a list).
    let Some(len) = data.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
    let Some(header) = data.get(8..8usize.saturating_add(len)) else { return };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header) else { return };
    for (name, _) in map.iter().filter(|(k, _)| *k != "__metadata__").take(8) {
        if let Some(shape) = w.shape(name) {
            if shape.iter().product::<i64>() <= 1 << 20 {
                let _ = w.get(name, &shape);
            }
        }
    }
});
