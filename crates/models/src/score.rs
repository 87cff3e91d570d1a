//! Scoring token sequences under the model: each row's mean next-token cross-entropy, batched.
//!
//! Rows are right-padded into batches of similar length. Causal attention means a row's real
//! tokens never attend to the padding after them, so every row's logits are the ones it gets alone
//! (no attention mask and no position shift, unlike left padding). Batches are capped by
//! `max_positions` (rows × longest row): the full-vocabulary logits of one position are
//! `4 × vocab` bytes, a megabyte for Gemma's 256k tokens.

use tch::{Kind, Tensor};

use crate::hooks::{Hooks, Logits};
use crate::model::{Model, ModelError};

/// `mean over i ≥ 1 of −log p(ids[i] | ids[..i])` per row, in the order given; NaN for a row of
/// fewer than two ids (no next-token loss to average).
pub fn mean_nll(model: &Model, rows: &[Vec<i64>], max_positions: usize) -> Result<Vec<f64>, ModelError> {
    let _guard = tch::no_grad_guard();
    let mut out = vec![f64::NAN; rows.len()];
    let mut order: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].len() >= 2).collect();
    order.sort_by_key(|&i| rows[i].len());
    let dev = model.device();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && (end + 1 - start) * rows[order[end]].len() <= max_positions {
            end += 1;
        }
        let chunk = &order[start..end];
        let (b, t) = (chunk.len(), rows[*chunk.last().unwrap()].len());
        let mut ids = vec![0i64; b * t];
        let mut targets = vec![0i64; b * (t - 1)];
        let mut valid = vec![0f32; b * (t - 1)];
        for (r, &i) in chunk.iter().enumerate() {
            let row = &rows[i];
            ids[r * t..r * t + row.len()].copy_from_slice(row);
            targets[r * (t - 1)..r * (t - 1) + row.len() - 1].copy_from_slice(&row[1..]);
            valid[r * (t - 1)..r * (t - 1) + row.len() - 1].fill(1.0);
        }
        let (b, t) = (b as i64, t as i64);
        let input = Tensor::from_slice(&ids).view([b, t]).to_device(dev);
        let logits = model
            .forward(&input, None, &Hooks::none(), Logits::All, None)?
            .logits
            .ok_or_else(|| ModelError::Input("the forward pass returned no logits".into()))?;
        let logits = logits.narrow(1, 0, t - 1).to_kind(Kind::Float);
        let targets = Tensor::from_slice(&targets).view([b, t - 1, 1]).to_device(dev);
        let valid = Tensor::from_slice(&valid).view([b, t - 1]).to_device(dev);
        // −log softmax at the target = logsumexp − logit, without a [B, T, V] log-softmax.
        let nll = (logits.logsumexp([-1], false) - logits.gather(2, &targets, false).squeeze_dim(-1)) * &valid;
        let mean = nll.sum_dim_intlist(-1, false, Kind::Double) / valid.sum_dim_intlist(-1, false, Kind::Double);
        let mean = Vec::<f64>::try_from(mean.to_device(tch::Device::Cpu))?;
        for (&i, m) in chunk.iter().zip(mean) {
            out[i] = m;
        }
        start = end;
    }
    Ok(out)
}
