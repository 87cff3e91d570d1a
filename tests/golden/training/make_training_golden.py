"""Golden values for tests/training.rs, from the reference implementations AxBench trains with.

* HF transformers (eager attention, f32) on tests/golden/models/tiny-gemma3: the LM loss of a right-padded batch with
  labels = -100 on prompts and padding (what every AxBench trainer minimises), and the gradient of a steering vector
  added at the output of layer 2 (a forward hook, as pyvene's addition intervention) with respect to that vector.
* peft (LoraConfig r=4, alpha=32, use_rslora, target o_proj, layers 1 and 3, no dropout) with fixed A/B: loss and
  gradients of A and B.
* torch.optim.AdamW + clip_grad_norm_ + get_linear_schedule_with_warmup(0): parameters after each of 5 steps.

Run: $(scripts/ref-env.sh) tests/golden/training/make_training_golden.py
"""
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

HERE = pathlib.Path(__file__).resolve().parent
TINY = HERE.parent / "models" / "tiny-gemma3"

torch.manual_seed(0)
rows = [([2, 11, 12, 13, 14], [40, 41, 42, 43]), ([2, 21, 22], [50, 51, 52, 53])]
T = max(len(p) + len(r) for p, r in rows)
ids = torch.zeros(len(rows), T, dtype=torch.long)
mask = torch.zeros_like(ids)
labels = torch.full_like(ids, -100)
for b, (p, r) in enumerate(rows):
    seq = p + r
    ids[b, : len(seq)] = torch.tensor(seq)
    mask[b, : len(seq)] = 1
    labels[b, len(p) : len(seq)] = torch.tensor(r)

model = AutoModelForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32, attn_implementation="eager")
model.eval()
for p in model.parameters():
    p.requires_grad_(False)

out = {"rows": [{"prompt": p, "response": r} for p, r in rows]}
with torch.no_grad():
    out["lm_loss"] = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()

# Steering vector at layer 2's output, every real position.
w = torch.full((model.config.hidden_size,), 0.01, requires_grad=True)
real = mask.bool().unsqueeze(-1).float()


def add_w(module, inputs, output):
    h = output[0] if isinstance(output, tuple) else output
    h = h + real * w
    return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


handle = model.model.layers[2].register_forward_hook(add_w)
loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
loss.backward()
handle.remove()
out["ssv_loss"] = loss.item()
out["ssv_grad"] = w.grad.tolist()

# LoRA through peft.
from peft import LoraConfig, get_peft_model  # noqa: E402

cfg = LoraConfig(r=4, lora_alpha=32, use_rslora=True, lora_dropout=0.0, target_modules=["o_proj"], layers_to_transform=[1, 3])
pm = get_peft_model(model, cfg)
tensors = {}
g = torch.Generator().manual_seed(1)
for name, p in pm.named_parameters():
    if "lora_" in name:
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        key = name.replace(".default", "")
        tensors[key] = p.detach().clone().contiguous()
loss = pm(input_ids=ids, attention_mask=mask, labels=labels).loss
loss.backward()
out["lora_loss"] = loss.item()
out["lora_grads"] = {n.replace(".default", ""): p.grad.flatten().tolist() for n, p in pm.named_parameters() if "lora_" in n}
save_file(tensors, HERE / "lora.safetensors")

# AdamW + clipping + linear schedule on a toy objective.
p = torch.tensor([1.0, -2.0, 3.0, 0.5], requires_grad=True)
target = torch.tensor([0.0, 1.0, -1.0, 2.0])
opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
sched = get_linear_schedule_with_warmup(opt, 0, 5)
trace = []
for step in range(5):
    loss = ((p - target) ** 2 * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p], 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    trace.append(p.detach().tolist())
out["adamw"] = {"init": [1.0, -2.0, 3.0, 0.5], "target": target.tolist(), "weights": [1.0, 2.0, 3.0, 4.0], "lr": 0.1,
                "weight_decay": 0.01, "steps": 5, "max_grad_norm": 1.0, "trace": trace}

(HERE / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
print("wrote", HERE / "expected.json")
