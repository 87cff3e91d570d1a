//! LoRA adapters on the attention output projection (`self_attn.o_proj`), as peft builds them
//! for AxBench's LoRA baseline (`LoraConfig(r=4, lora_alpha=32, use_rslora=True,
//! lora_dropout=0.05, target_modules=["o_proj"], layers_to_transform=[...])`).
//!
//! Per adapted layer, `o_proj(x) + strength * scaling * B(A(dropout(x)))` with `A: [r, in]`
//! initialised like peft (`kaiming_uniform_(a=√5)`, i.e. `U(-1/√in, 1/√in)`), `B: [out, r]` zero
//! (so a fresh adapter is the identity), and rsLoRA's `scaling = alpha / √r`. `strength` is ours:
//! 1 is peft's adapter, 0 switches it off (the identity check), other values scale the change.
//!
//! Checkpoints use peft's tensor names
//! (`base_model.model.model.layers.{i}.self_attn.o_proj.lora_{A,B}.weight`), so an adapter
//! trained here can be inspected with peft's tools and vice versa.

use std::cell::Cell;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::hooks::{Hooks, LinearAdapter};
use crate::model::{Model, ModelError};

/// One layer's adapter.
#[derive(Debug)]
pub struct LoraLayer {
    pub layer: usize,
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    scaling: f64,
    dropout: f64,
    training: Cell<bool>,
    strength: Cell<f64>,
}

impl LinearAdapter for LoraLayer {
    fn delta(&self, x: &Tensor) -> Tensor {
        let a = self.a.to_kind(x.kind());
        let b = self.b.to_kind(x.kind());
        let x = if self.training.get() && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        x.linear::<&Tensor>(&a, None).linear::<&Tensor>(&b, None) * (self.scaling * self.strength.get())
    }
}

/// LoRA hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    /// rsLoRA: `alpha / √r` instead of `alpha / r`.
    pub rslora: bool,
    pub dropout: f64,
    pub layers: Vec<usize>,
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// Adapters on `o_proj` of several layers.
#[derive(Debug)]
pub struct Lora {
    pub config: LoraConfig,
    pub layers: Vec<LoraLayer>,
}

fn tensor_name(layer: usize, ab: &str) -> String {
    format!("base_model.model.model.layers.{layer}.self_attn.o_proj.lora_{ab}.weight")
}

/// `(out, in)` of layer `layer`'s `o_proj`.
fn o_proj_shape(model: &Model, layer: usize) -> Result<(i64, i64), ModelError> {
    let name = format!("model.layers.{layer}.self_attn.o_proj.weight");
    let n = model.info().num_layers;
    model
        .parameters()
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, t)| (t.size()[0], t.size()[1]))
        .ok_or_else(|| ModelError::Input(format!("LoRA layer {layer} out of range: the model has {n} layers")))
}

impl Lora {
    /// Fresh adapters for `model` (f32, on its device; `A` drawn from torch's global RNG, so seed
    /// it with `tch::manual_seed` first). Their tensors require grad.
    pub fn new(model: &Model, config: LoraConfig) -> Result<Self, ModelError> {
        if config.rank < 1 {
            return Err(ModelError::Input(format!("LoRA rank must be ≥ 1, got {}", config.rank)));
        }
        let device = model.device();
        let mut layers = Vec::new();
        for &l in &config.layers {
            let (out, inp) = o_proj_shape(model, l)?;
            let bound = 1.0 / (inp as f64).sqrt();
            let a = (Tensor::rand([config.rank, inp], (Kind::Float, device)) * (2.0 * bound) - bound)
                .set_requires_grad(true);
            let b = Tensor::zeros([out, config.rank], (Kind::Float, device)).set_requires_grad(true);
            layers.push(LoraLayer {
                layer: l,
                a,
                b,
                scaling: config.scaling(),
                dropout: config.dropout,
                training: Cell::new(false),
                strength: Cell::new(1.0),
            });
        }
        Ok(Self { config, layers })
    }

    /// Puts the adapters on `hooks`.
    pub fn attach<'a>(&'a self, mut hooks: Hooks<'a>) -> Hooks<'a> {
        for l in &self.layers {
            hooks = hooks.adapt_o_proj(l.layer, l);
        }
        hooks
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .flat_map(|l| [l.a.shallow_clone(), l.b.shallow_clone()])
            .collect()
    }

    /// Dropout on (training) or off (inference).
    pub fn set_training(&self, on: bool) {
        for l in &self.layers {
            l.training.set(on);
        }
    }

    /// Multiplies every adapter's change (1 = as trained, 0 = off).
    pub fn set_strength(&self, s: f64) {
        for l in &self.layers {
            l.strength.set(s);
        }
    }

    /// The tensors under peft's names.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    (tensor_name(l.layer, "A"), l.a.detach().to_device(Device::Cpu)),
                    (tensor_name(l.layer, "B"), l.b.detach().to_device(Device::Cpu)),
                ]
            })
            .collect()
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let named = self.named_tensors();
        Tensor::write_safetensors(&named, path).map_err(ModelError::Torch)
    }

    /// Reads adapters saved by [`Lora::save`] for `config.layers` onto `device`; errors name the
    /// file and the missing or misshapen tensor.
    pub fn load(path: &Path, config: LoraConfig, device: Device) -> Result<Self, ModelError> {
        let tensors = Tensor::read_safetensors(path).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let get = |name: String| -> Result<Tensor, ModelError> {
            tensors
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.to_kind(Kind::Float).to_device(device))
                .ok_or(ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: name,
                })
        };
        let mut layers = Vec::new();
        for &l in &config.layers {
            let (a, b) = (get(tensor_name(l, "A"))?, get(tensor_name(l, "B"))?);
            if a.size()[0] != config.rank || b.size()[1] != config.rank {
                return Err(ModelError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: tensor_name(l, "A"),
                    expected: vec![config.rank, -1],
                    found: a.size(),
                });
            }
            layers.push(LoraLayer {
                layer: l,
                a,
                b,
                scaling: config.scaling(),
                dropout: config.dropout,
                training: Cell::new(false),
                strength: Cell::new(1.0),
            });
        }
        Ok(Self { config, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::Logits;
    use crate::model::LoadOptions;

    fn tiny() -> Model {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/models/tiny-gemma3");
        Model::load(
            &dir,
            &LoadOptions {
                device: crate::device::DeviceSpec::Cpu,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn rslora_scaling_and_identity_at_init() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(0);
        let m = tiny();
        let cfg = LoraConfig {
            rank: 4,
            alpha: 32.0,
            rslora: true,
            dropout: 0.05,
            layers: vec![1, 3],
        };
        assert_eq!(cfg.scaling(), 16.0);
        let lora = Lora::new(&m, cfg.clone()).unwrap();
        assert_eq!(lora.layers[0].a.size(), vec![4, 64]); // 4 heads x 16 = 64 inputs
        let ids = Tensor::from_slice(&[2i64, 17, 33, 45]).view([1, 4]);
        let plain = m
            .forward(&ids, None, &Hooks::none(), Logits::All, None)
            .unwrap()
            .logits
            .unwrap();
        let with = m
            .forward(&ids, None, &lora.attach(Hooks::none()), Logits::All, None)
            .unwrap()
            .logits
            .unwrap();
        assert!(plain.equal(&with), "B = 0 at init: the adapter changes nothing");
        // A non-zero B changes the output; strength 0 restores the base model exactly.
        let _ = lora.layers[0].b.shallow_clone().fill_(0.1);
        let changed = m
            .forward(&ids, None, &lora.attach(Hooks::none()), Logits::All, None)
            .unwrap()
            .logits
            .unwrap();
        assert!((&changed - &plain).abs().max().double_value(&[]) > 1e-4);
        lora.set_strength(0.0);
        let off = m
            .forward(&ids, None, &lora.attach(Hooks::none()), Logits::All, None)
            .unwrap()
            .logits
            .unwrap();
        assert!(off.equal(&plain));
        // Save / load round trip under peft's names.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lora.safetensors");
        lora.save(&p).unwrap();
        let back = Lora::load(&p, cfg, Device::Cpu).unwrap();
        assert!(back.layers[0].b.equal(&lora.layers[0].b.detach()));
        let bad = Lora::load(
            &p,
            LoraConfig {
                rank: 4,
                alpha: 32.0,
                rslora: true,
                dropout: 0.0,
                layers: vec![2],
            },
            Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("layers.2.self_attn.o_proj.lora_A"), "{bad}");
    }
}
