"""PyTorch + transformers side of `cargo xtask bench`: the same workloads as `mosr-lm bench`.

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
    ap.add_argument("--workload", required=True, choices=["prefill", "generate", "matmul"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    times, tokens = [], 0
    if a.workload == "matmul":
        n = 1024
        x, y = torch.rand(n, n), torch.rand(n, n)
        x @ y
        for _ in range(max(a.repeats, 5)):
            t0 = time.perf_counter(); x @ y; times.append(time.perf_counter() - t0)
        flops = 2 * n ** 3
    else:
        d = os.path.dirname(os.path.abspath(a.gguf))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=os.path.basename(a.gguf), torch_dtype=torch.float32)
        model.eval()
        c = model.config
        ids = torch.tensor(bench_ids(a.batch, a.seq, c.vocab_size))
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            if a.workload == "prefill":
                run = lambda: model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
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


if __name__ == "__main__":
    main()
