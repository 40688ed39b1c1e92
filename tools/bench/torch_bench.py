"""PyTorch + transformers (+ PEFT) side of `cargo xtask bench`: the same workloads as
`mosr-lm bench` (matmul, prefill, generate) and `mosr-finetune bench` (train).

Prints one JSON line per call, like the Rust side. Run with a venv holding torch and
transformers (see tools/reference/README.md), e.g.
    python tools/bench/torch_bench.py --gguf PATH --workload prefill
"""
import argparse, json, os, resource, statistics, time

import torch
from transformers import AutoModelForCausalLM


def bench_ids(batch, seq, vocab):
    # Same deterministic ids as mosr-lm's bench (no special tokens).
    return [[1000 + (b * 7919 + t * 104729) % (vocab - 2000) for t in range(seq)] for b in range(batch)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--workload", required=True, choices=["prefill", "generate", "matmul", "matmul-amx", "train"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=4, help="train: erasure rows (as many retain rows again)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    times, tokens = [], 0
    # matmul-amx is mosr's f32-exact product on AMX tiles; PyTorch's counterpart is its f32 matmul.
    if a.workload in ("matmul", "matmul-amx"):
        n = 1024
        x, y = torch.rand(n, n), torch.rand(n, n)
        x @ y
        for _ in range(max(a.repeats, 5)):
            t0 = time.perf_counter(); x @ y; times.append(time.perf_counter() - t0)
        flops = 2 * n ** 3
    elif a.workload == "train":
        times, tokens, flops = train_step(a)
    else:
        d = os.path.dirname(os.path.abspath(a.gguf))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=os.path.basename(a.gguf), torch_dtype=torch.float32)
        model.eval()
        c = model.config
        ids = torch.tensor(bench_ids(a.batch, a.seq, c.vocab_size))
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            if a.workload == "prefill":
                # Same work as mosr's extraction: every hidden state, logits of the last position only
                # (logits_to_keep=1; the default unembeds all 1024 positions, ~20% more FLOPs).
                run = lambda: model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
                tokens = a.batch * a.seq
            else:
                run = lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                                             min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
                tokens = a.batch * a.new_tokens
            run()
            for _ in range(a.repeats):
                t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
        hd = c.hidden_size // c.num_attention_heads
        params = c.num_hidden_layers * (c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * hd
                                        + c.num_attention_heads * hd * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
        flops = tokens * 2 * params
    med = statistics.median(times)
    print(json.dumps({"impl": "pytorch", "workload": a.workload, "median_s": med, "times_s": sorted(times),
                      "tokens": tokens, "tokens_per_s": tokens / med if tokens else 0.0,
                      "gflops_per_s": flops / med / 1e9,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "torch": torch.__version__}))


def train_step(a):
    """One step of the rr losses as mosr-finetune runs it: LoRA r16/a16/dropout 0.05 on the seven
    projections of blocks 0..2/3 depth, original states with the adapter disabled (no grad),
    erasure ReLU(cos) at 1/3 and 2/3 depth, retain L2 on hidden states 1..2/3 depth,
    c = alpha(1 - t/2T), alpha t/2T with alpha 10, T = steps, clip 1.0, AdamW lr 1e-4."""
    from peft import LoraConfig, get_peft_model

    d = os.path.dirname(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=os.path.basename(a.gguf), torch_dtype=torch.float32)
    c = model.config
    depth = c.num_hidden_layers
    targets = sorted({max(1, round(depth / 3)), max(1, round(2 * depth / 3))})
    top = max(targets)
    # Blocks above the deepest loss layer never run, and the final norm is not applied to the
    # last kept state (transformers would apply it to the last hidden state).
    model.model.layers = model.model.layers[:top]
    model.model.norm = torch.nn.Identity()
    for p in model.parameters():
        p.requires_grad_(False)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=modules,
                                             layers_to_transform=list(range(top)), bias="none"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    b = a.train_batch
    ids = torch.tensor(bench_ids(2 * b, a.seq, c.vocab_size))
    mask = torch.ones_like(ids)
    retain = list(range(1, top + 1))
    steps = a.repeats + 1
    inner = model.base_model.model.model

    def step(t):
        ce, cr = 10.0 * (1 - t / (2 * steps)), 10.0 * t / (2 * steps)
        with torch.no_grad(), model.disable_adapter():
            model.eval()
            orig = inner(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        model.train()
        lora = inner(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        m = mask.float()
        erase = sum((torch.relu(torch.nn.functional.cosine_similarity(lora[l][:b], orig[l][:b], dim=-1)) * m[:b]).sum()
                    for l in targets) / (len(targets) * m[:b].sum())
        keep = sum((torch.norm(lora[l][b:] - orig[l][b:], dim=-1) * m[b:]).sum()
                   for l in retain) / (len(retain) * m[b:].sum())
        loss = ce * erase + cr * keep
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    step(1)
    for t in range(2, steps + 1):
        t0 = time.perf_counter(); step(t); times.append(time.perf_counter() - t0)
    tokens = 2 * b * a.seq
    hd = c.hidden_size // c.num_attention_heads
    per_block = (c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * hd
                 + c.num_attention_heads * hd * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    return times, tokens, 6 * per_block * top * tokens


if __name__ == "__main__":
    main()
