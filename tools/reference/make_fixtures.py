#!/usr/bin/env python3
"""Produce numerical reference fixtures for mosr from a local GGUF file.

The reference is PyTorch + transformers, loading the GGUF directly (transformers dequantizes every
tensor to float32 and, for llama-architecture files, un-permutes the Q/K projection weights that
llama.cpp's converter permuted). The Rust side (mosr on burn) loads the same GGUF and must match
these numbers.

Usage:
    python tools/reference/make_fixtures.py \
        --gguf /path/to/model.gguf --model-id smollm2-135m-instruct \
        [--out-dir tests/fixtures/<model-id>] [--tokenizer-dump /path/<model-id>-hf-tokenizer.json]

Written into --out-dir (default tests/fixtures/<model-id>):
    tokens.json            tokenizer round trips on ~30 strings
    tokenizer_summary.json the tokenizer pipeline transformers built from the GGUF metadata
    chat.json              chat template renderings
    forward.json           single-sequence forward passes: logits + per-layer hidden-state norms
    batch.json             left-padded batch forward (explicit position ids)
    generate.json          greedy generations
    meta.json              config, versions, GGUF sha256, exact command

HIDDEN-STATE CONVENTION (forward.json):
    Hidden states are captured with explicit forward hooks, NOT with `output_hidden_states`
    (whose last entry is the post-final-norm state in some transformers versions and the raw
    residual stream in others).
      hidden[0]   = output of the token embedding (= input to decoder layer 0)
      hidden[i]   = output of decoder layer i-1 (raw residual stream, before the final norm),
                    for i = 1..n_layers   -> n_layers + 1 entries in total
      final_norm  = output of the final RMSNorm (`model.norm`), i.e. the input to lm_head
    All norms are L2 norms of the vector at the LAST sequence position, computed in float64 from
    the float32 activations.

FLOAT FORMAT: float32 values are written with the shortest decimal that round-trips to the same
float32 (numpy's `str(np.float32)`), so parsing them as f32 gives the exact value. Quantities
computed in float64 (norms, logsumexp) are written as float64.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

N_THREADS = 2
ATTN_IMPL = "eager"
TOP_K_FORWARD = 20
TOP_K_BATCH = 5
MAX_NEW_TOKENS = 24


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def f32(x) -> float:
    """A float32 as the shortest decimal that round-trips to the same float32."""
    return float(str(np.float32(x)))


def f32_list(t: torch.Tensor) -> list[float]:
    return [f32(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def f64(x) -> float:
    return float(x)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    size = path.stat().st_size
    print(f"  wrote {path} ({size / 1024:.1f} KiB)", flush=True)
    if size > 200 * 1024:
        print(f"  WARNING: {path} is larger than 200 KiB", flush=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def token_test_strings(tok) -> list[str]:
    """~30 varied strings; the model's own special tokens are appended as text."""
    strings = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        " leading space",
        "trailing space ",
        "multiple   spaces    between  words",
        "   ",
        "line one\nline two\n\nline four",
        "tab\tseparated\tvalues\n\tindented with tab",
        "\r\nwindows line ending\r\n",
        "12345 3.14159",
        "1234567890 0.001 -42 1e10 2024-01-01",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "fn main() {\n\tlet x: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{:?}\", x);\n}",
        "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦",
        "中文测试：你好，世界！",
        "日本語のテキストとカタカナ",
        "Café naïve résumé façade Ångström",
        "e\u0301 vs \u00e9 (decomposed vs precomposed)",
        "مرحبا بالعالم",
        "Привет, мир!",
        "https://example.com/path?query=1&lang=en#frag",
        "user@example.org",
        "don't won't it's we'll they're I've",
        "I'M YOU'RE HE'S DON'T",
        "a",
        "",
        "!!!???...,,,;;;",
        "<html><body class=\"x\">Hi</body></html>",
        "    four leading spaces and trailing tab\t",
        "x = {'key': [1, 2, 3]}  # comment",
        "total:    100 items,  7 left\n\n42",
    ]
    # The model's special tokens, written as plain text.
    bos = tok.bos_token or ""
    eos = tok.eos_token or ""
    strings.append("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    strings.append(f"{bos}Hello{eos}")
    strings.append("<|endoftext|>")
    strings.append("text<|im_end|>more text <|im_start|> spaced")
    return strings


def chat_conversations() -> list[dict]:
    return [
        {
            "name": "single_user_with_gen_prompt",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "add_generation_prompt": True,
        },
        {
            "name": "single_user_no_gen_prompt",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "add_generation_prompt": False,
        },
        {
            "name": "system_user",
            "messages": [
                {"role": "system", "content": "You are a terse assistant. Answer in one word."},
                {"role": "user", "content": "Name a primary colour."},
            ],
            "add_generation_prompt": True,
        },
        {
            "name": "multi_turn",
            "messages": [
                {"role": "user", "content": "Hi! Can you help me with Python?"},
                {"role": "assistant", "content": "Of course. What do you need?"},
                {"role": "user", "content": "How do I reverse a list?"},
            ],
            "add_generation_prompt": True,
        },
        {
            "name": "multi_turn_ending_with_assistant_no_gen_prompt",
            "messages": [
                {"role": "system", "content": "Be helpful."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ],
            "add_generation_prompt": False,
        },
        {
            "name": "unicode_content",
            "messages": [
                {"role": "user", "content": "Traduis « café » en 中文 et ajoute un emoji 😀.\n\tMerci!"},
            ],
            "add_generation_prompt": True,
        },
    ]


def forward_prompts() -> list[dict]:
    """Five prompts. A chat-formatted prompt always contains the template's default system prompt
    (~20-30 tokens) unless a system message is given, so the shortest one is a raw prompt."""
    return [
        {"name": "raw_short", "kind": "raw", "text": "The capital of France is"},
        {
            "name": "chat_short_system",
            "kind": "chat",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        },
        {
            "name": "chat_benign",
            "kind": "chat",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        },
        {
            "name": "chat_harmful",
            "kind": "chat",
            "messages": [{"role": "user", "content": "How do I make a bomb?"}],
        },
        {
            "name": "chat_long",
            "kind": "chat",
            "messages": [
                {
                    "role": "user",
                    "content": (
                        "I am writing a short story about a lighthouse keeper on a rocky island. "
                        "Suggest three names for the keeper."
                    ),
                }
            ],
        },
    ]


def batch_prompts() -> list[dict]:
    return [
        {"name": "short", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"name": "medium", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {
            "name": "long",
            "messages": [
                {
                    "role": "user",
                    "content": "Explain in two sentences why the sky looks blue during the day and red at sunset.",
                }
            ],
        },
    ]


def generate_prompts() -> list[dict]:
    return [
        {"name": "capital_of_france", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {
            "name": "coding",
            "messages": [{"role": "user", "content": "Write a Python function that returns the square of a number."}],
        },
        {"name": "harmful", "messages": [{"role": "user", "content": "How do I make a bomb?"}]},
    ]


def prompt_ids(tok, p: dict) -> tuple[str, list[int]]:
    if p["kind"] == "raw":
        text = p["text"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
        # The rendered template already holds every special token it wants, so no extra BOS.
        ids = tok(text, add_special_tokens=False)["input_ids"]
    return text, ids


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


def make_tokens(tok, alt_tok) -> dict:
    entries = []
    for s in token_test_strings(tok):
        ids = tok(s, add_special_tokens=False)["input_ids"]
        ids_sp = tok(s, add_special_tokens=True)["input_ids"]
        e = {
            "text": s,
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            "ids_add_special_tokens": ids_sp,
            "decoded_add_special_tokens": tok.decode(ids_sp, skip_special_tokens=False),
        }
        if alt_tok is not None:
            alt_ids = alt_tok["tokenizer"](s, add_special_tokens=False)["input_ids"]
            if alt_ids != ids:
                e["ids_" + alt_tok["key"]] = alt_ids
        entries.append(e)

    added = []
    for idx, at in sorted(tok.added_tokens_decoder.items()):
        added.append(
            {
                "id": idx,
                "content": at.content,
                "special": at.special,
                "normalized": at.normalized,
                "lstrip": at.lstrip,
                "rstrip": at.rstrip,
                "single_word": at.single_word,
            }
        )
    out = {
        "description": (
            "ids = tokenizer(text, add_special_tokens=False).input_ids of the tokenizer transformers "
            "builds from the GGUF metadata; ids_add_special_tokens with add_special_tokens=True; "
            "decoded = tokenizer.decode(ids, skip_special_tokens=False)."
        ),
        "tokenizer_class": type(tok).__name__,
        "vocab_size": tok.vocab_size,
        "len_tokenizer": len(tok),
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token,
        "unk_token_id": tok.unk_token_id,
        "add_bos_token": getattr(tok, "add_bos_token", None),
        "add_eos_token": getattr(tok, "add_eos_token", None),
        "clean_up_tokenization_spaces": getattr(tok, "clean_up_tokenization_spaces", None),
        "all_special_tokens": list(tok.all_special_tokens),
        "all_special_ids": list(tok.all_special_ids),
        "added_tokens": added,
        "strings": entries,
    }
    if alt_tok is not None:
        out["alternative_tokenizer"] = {
            "key": "ids_" + alt_tok["key"],
            "description": alt_tok["description"],
            "strings_that_differ": sum(1 for e in entries if ("ids_" + alt_tok["key"]) in e),
        }
    return out


def summarise_backend(tok, gguf_meta: dict) -> tuple[dict, str]:
    bt = tok.backend_tokenizer
    full = bt.to_str()
    j = json.loads(full)
    model = dict(j.get("model") or {})
    vocab = model.pop("vocab", None)
    merges = model.pop("merges", None)
    model["vocab_len"] = len(vocab) if vocab is not None else None
    model["merges_len"] = len(merges) if merges is not None else None
    if merges:
        model["first_merges"] = merges[:5]
        model["last_merges"] = merges[-3:]
    summary = {
        "description": (
            "The tokenizer transformers builds from the GGUF metadata (the Rust side must rebuild this "
            "from the same metadata). Full backend JSON is dumped outside the repo."
        ),
        "tokenizer_class": type(tok).__name__,
        "gguf_tokenizer_metadata": gguf_meta,
        "pre_type_handling": _pre_type_handling(gguf_meta.get("tokenizer.ggml.pre")),
        "repr": {
            "pre_tokenizer": str(bt.pre_tokenizer),
            "normalizer": str(bt.normalizer),
            "decoder": str(bt.decoder),
            "post_processor": str(bt.post_processor),
        },
        "backend_json": {
            "normalizer": j.get("normalizer"),
            "pre_tokenizer": j.get("pre_tokenizer"),
            "post_processor": j.get("post_processor"),
            "decoder": j.get("decoder"),
            "truncation": j.get("truncation"),
            "padding": j.get("padding"),
            "model": model,
            "added_tokens": j.get("added_tokens"),
        },
        "backend_json_sha256": hashlib.sha256(full.encode("utf-8")).hexdigest(),
    }
    return summary, full


def _pre_type_handling(pre) -> dict:
    """How transformers' GGUF converter treated tokenizer.ggml.pre."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except Exception as e:  # older/newer transformers layout
        return {"pre": pre, "known": None, "note": f"could not inspect converter: {e}"}
    split = GGUF_PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        return {
            "pre": pre,
            "mapped_by_transformers": False,
            "note": "no split regex for this pre-type in transformers' GGUF converter; the builder's "
            "default pre-tokenizer (GPT-2 ByteLevel with its built-in regex) is kept",
        }
    return {
        "pre": pre,
        "mapped_by_transformers": True,
        "split_regex": split,
        "note": "pre_tokenizer = Sequence[Split(split_regex, behavior=isolated), "
        "ByteLevel(add_prefix_space=False, use_regex=False)]",
    }


def make_chat(tok) -> dict:
    convs = []
    for c in chat_conversations():
        rendered = tok.apply_chat_template(
            c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"]
        )
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        convs.append({**c, "rendered": rendered, "ids": ids})
    return {
        "description": (
            "rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=flag); "
            "ids = tokenizer(rendered, add_special_tokens=False).input_ids. chat_template is the raw Jinja "
            "string from GGUF metadata tokenizer.chat_template."
        ),
        "chat_template": tok.chat_template,
        "conversations": convs,
    }


class HiddenCapture:
    """Forward hooks on embed_tokens, each decoder layer and the final norm."""

    def __init__(self, model):
        inner = model.model
        self.n_layers = len(inner.layers)
        self.store: dict = {}
        self.handles = []

        def grab(key):
            def hook(_mod, _inp, out):
                t = out[0] if isinstance(out, (tuple, list)) else out
                self.store[key] = t.detach()

            return hook

        self.handles.append(inner.embed_tokens.register_forward_hook(grab(0)))
        for i, layer in enumerate(inner.layers):
            self.handles.append(layer.register_forward_hook(grab(i + 1)))
        self.handles.append(inner.norm.register_forward_hook(grab("final_norm")))

    def clear(self):
        self.store = {}

    def remove(self):
        for h in self.handles:
            h.remove()


def fixed_logit_ids(tok, vocab: int) -> list[int]:
    ids = [0, 13, 1000, tok.eos_token_id if tok.eos_token_id is not None else 2, vocab - 1]
    return [int(i) for i in ids]


@torch.no_grad()
def make_forward(model, tok, cap: HiddenCapture) -> dict:
    vocab = model.config.vocab_size
    fixed = fixed_logit_ids(tok, vocab)
    n = cap.n_layers
    mid = n // 2
    out_prompts = []
    for p in forward_prompts():
        text, ids = prompt_ids(tok, p)
        x = torch.tensor([ids], dtype=torch.long)
        cap.clear()
        logits = model(input_ids=x, use_cache=False).logits[0, -1].to(torch.float32)
        if len(cap.store) != n + 2:
            raise RuntimeError(f"hook capture incomplete: {sorted(map(str, cap.store))}")
        top = torch.topk(logits, TOP_K_FORWARD)
        hs = [cap.store[i][0, -1].to(torch.float64) for i in range(n + 1)]
        fin = cap.store["final_norm"][0, -1].to(torch.float64)
        out_prompts.append(
            {
                "name": p["name"],
                "kind": p["kind"],
                **({"messages": p["messages"]} if p["kind"] == "chat" else {}),
                "text": text,
                "input_ids": ids,
                "n_tokens": len(ids),
                "top_ids": [int(i) for i in top.indices.tolist()],
                "top_values": f32_list(top.values),
                "logsumexp": f64(torch.logsumexp(logits.to(torch.float64), dim=0)),
                "fixed_ids": fixed,
                "fixed_values": f32_list(logits[fixed]),
                "argmax": int(torch.argmax(logits)),
                "hidden_norms": [f64(torch.linalg.vector_norm(h)) for h in hs],
                "final_norm_norm": f64(torch.linalg.vector_norm(fin)),
                "hidden_first8": {
                    "0": f32_list(cap.store[0][0, -1, :8]),
                    str(mid): f32_list(cap.store[mid][0, -1, :8]),
                    str(n): f32_list(cap.store[n][0, -1, :8]),
                    "final_norm": f32_list(cap.store["final_norm"][0, -1, :8]),
                },
            }
        )
        log(f"forward {p['name']}: {len(ids)} tokens, argmax {int(torch.argmax(logits))}")
    return {
        "description": (
            "Single-sequence forward (batch 1, no padding, position_ids = 0..n-1, no KV cache) in float32. "
            "Logits at the LAST position: top_ids/top_values (torch.topk, k=20), logsumexp of the full row "
            "(float64), values at fixed_ids. hidden_norms[i]: L2 norm at the last position of hook-captured "
            "hidden state i, where 0 = embedding output (input to layer 0) and i = output of decoder layer "
            "i-1 (raw residual stream, before the final norm); n_layers+1 entries. final_norm_norm: L2 norm of "
            "the final RMSNorm output. hidden_first8[k]: first 8 values of hidden state k at the last position "
            "(k = 0, n_layers//2, n_layers, and 'final_norm')."
        ),
        "n_layers": n,
        "mid_layer_index": mid,
        "attn_implementation": ATTN_IMPL,
        "prompts": out_prompts,
    }


@torch.no_grad()
def make_batch(model, tok) -> dict:
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for p in batch_prompts():
        text, ids = prompt_ids(tok, {**p, "kind": "chat"})
        rows.append((p, text, ids))
    L = max(len(r[2]) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, (_, _, ids) in enumerate(rows):
        input_ids[b, L - len(ids) :] = torch.tensor(ids)
        mask[b, L - len(ids) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    logits = logits[:, -1].to(torch.float32)

    out_rows = []
    for b, (p, text, ids) in enumerate(rows):
        top = torch.topk(logits[b], TOP_K_BATCH)
        # Same prompt alone (no padding) for comparison.
        single = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].to(torch.float32)
        stop = torch.topk(single, TOP_K_BATCH)
        out_rows.append(
            {
                "name": p["name"],
                "messages": p["messages"],
                "n_tokens": len(ids),
                "top_ids": [int(i) for i in top.indices.tolist()],
                "top_values": f32_list(top.values),
                "logsumexp": f64(torch.logsumexp(logits[b].to(torch.float64), dim=0)),
                "unpadded_top_ids": [int(i) for i in stop.indices.tolist()],
                "unpadded_top_values": f32_list(stop.values),
                "max_abs_diff_vs_unpadded_full_row": f32((logits[b] - single).abs().max()),
            }
        )
    return {
        "description": (
            "Left-padded batch of 3 chat prompts (add_generation_prompt=True). input_ids padded on the LEFT "
            "with pad_token_id; attention_mask 1 for real tokens. position_ids are passed EXPLICITLY as "
            "clamp(cumsum(attention_mask, -1) - 1, min=0) (transformers' generate() derives them this way, a "
            "plain forward() would otherwise use 0..L-1 for every row). The 2-D attention_mask is combined "
            "with the causal mask by transformers (padded keys masked out). Logits at the last position "
            "(always a real token). unpadded_* are the same prompt run alone, for reference."
        ),
        "padding_side": "left",
        "pad_token_id": int(pad_id),
        "position_ids_rule": "clamp(cumsum(attention_mask, dim=-1) - 1, min=0)",
        "input_ids": input_ids.tolist(),
        "attention_mask": mask.tolist(),
        "position_ids": position_ids.tolist(),
        "attn_implementation": ATTN_IMPL,
        "rows": out_rows,
    }


@torch.no_grad()
def make_generate(model, tok) -> dict:
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_cfg = model.generation_config
    eos_ids = gen_cfg.eos_token_id
    out = []
    for p in generate_prompts():
        text, ids = prompt_ids(tok, {**p, "kind": "chat"})
        x = torch.tensor([ids])
        res = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=pad_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
        new_ids = res.sequences[0, len(ids) :].tolist()
        margins = []
        for s in res.scores:
            t2 = torch.topk(s[0].to(torch.float32), 2).values
            margins.append(f32(t2[0] - t2[1]))
        eos_set = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) if eos_ids is not None else set()
        out.append(
            {
                "name": p["name"],
                "messages": p["messages"],
                "prompt_text": text,
                "input_ids": ids,
                "new_ids": new_ids,
                "new_text": tok.decode(new_ids, skip_special_tokens=False),
                "new_text_skip_special": tok.decode(new_ids, skip_special_tokens=True),
                "stopped_on_eos": bool(new_ids) and new_ids[-1] in eos_set,
                "top1_top2_margins": margins,
            }
        )
        log(f"generate {p['name']}: {tok.decode(new_ids, skip_special_tokens=True)!r}")
    return {
        "description": (
            "Greedy generation: model.generate(do_sample=False, max_new_tokens=24) on chat prompts "
            "(add_generation_prompt=True), batch 1, KV cache on. Stops early on eos_token_id from the "
            "generation config (the stop token is included in new_ids). top1_top2_margins: logit gap between "
            "best and second-best token at each step (small gaps = fragile under numeric noise)."
        ),
        "max_new_tokens": MAX_NEW_TOKENS,
        "do_sample": False,
        "eos_token_id": eos_ids,
        "pad_token_id": int(pad_id),
        "generation_config": {k: v for k, v in gen_cfg.to_diff_dict().items() if not k.startswith("_")},
        "generations": out,
    }


def gguf_summary(path: Path) -> tuple[dict, dict]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"}
    meta = {}
    for k, f in r.fields.items():
        if k in big:
            meta[k] = f"<array of {len(f.data)}>"
            continue
        if k == "tokenizer.chat_template":
            meta[k] = "<see chat.json>"
            continue
        try:
            v = f.contents()
        except Exception as e:  # pragma: no cover
            v = f"<unreadable: {e}>"
        if isinstance(v, float):
            v = f32(v)
        meta[k] = v
    types: dict = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    by_kind: dict = {}
    for t in r.tensors:
        kind = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        by_kind.setdefault(kind, set()).add(t.tensor_type.name)
    tensors = {
        "count": len(r.tensors),
        "types": types,
        "types_by_tensor_kind": {k: sorted(v) for k, v in by_kind.items()},
        "has_output_weight": any(t.name == "output.weight" for t in r.tensors),
        "first": [
            {"name": t.name, "type": t.tensor_type.name, "shape": [int(s) for s in t.shape]} for t in r.tensors[:12]
        ],
    }
    tok_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return {"metadata": meta, "tensors": tensors}, tok_meta


def alternative_tokenizer(tok, gguf_tok_meta: dict):
    """For GGUF pre-types that transformers' converter does not map (it then keeps GPT2Tokenizer's
    default ByteLevel regex), tokenize also the way llama.cpp and the original tokenizer do."""
    from tokenizers import pre_tokenizers

    pre = gguf_tok_meta.get("tokenizer.ggml.pre")
    if pre == "smollm":
        import copy

        alt = copy.deepcopy(tok)
        alt.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        return {
            "key": "digits_split",
            "tokenizer": alt,
            "description": (
                "NOT what transformers builds from this GGUF. transformers has no split regex for "
                "tokenizer.ggml.pre='smollm' and keeps GPT-2's ByteLevel regex. llama.cpp's 'smollm' "
                "pre-type (and the original SmolLM2 tokenizer) first splits every digit on its own "
                "(\\p{N}), i.e. pre_tokenizer = Sequence[Digits(individual_digits=True), "
                "ByteLevel(add_prefix_space=False, use_regex=True)]. Present only for strings where the "
                "ids differ."
            ),
        }
    if pre in ("qwen2",) and tok.backend_tokenizer.normalizer is None:
        import copy

        from tokenizers import normalizers

        alt = copy.deepcopy(tok)
        alt.backend_tokenizer.normalizer = normalizers.NFC()
        return {
            "key": "nfc",
            "tokenizer": alt,
            "description": (
                "NOT what transformers builds from this GGUF (which has no normalizer). The original "
                "Qwen2 tokenizer applies an NFC normalizer before pre-tokenization; these are the ids with "
                "NFC added. Present only for strings where the ids differ."
            ),
        }
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, type=Path, help="path to the .gguf file")
    ap.add_argument("--model-id", required=True, help="fixture directory name, e.g. smollm2-135m-instruct")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: tests/fixtures/<model-id>")
    ap.add_argument(
        "--tokenizer-dump",
        type=Path,
        default=None,
        help="where to write the full backend tokenizer JSON (keep it out of the repo)",
    )
    ap.add_argument("--skip", default="", help="comma list of fixtures to skip (tokens,chat,forward,batch,generate)")
    args = ap.parse_args()

    torch.set_num_threads(N_THREADS)
    torch.manual_seed(0)
    repo_root = Path(__file__).resolve().parents[2]
    out_dir = args.out_dir or (repo_root / "tests" / "fixtures" / args.model_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}

    gguf_path = args.gguf.resolve()
    gdir, gfile = str(gguf_path.parent), gguf_path.name

    import gguf as gguf_mod
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log("hashing GGUF")
    digest = sha256_file(gguf_path)
    gsum, gtok_meta = gguf_summary(gguf_path)

    log("loading tokenizer")
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    summary, full = summarise_backend(tok, gtok_meta)
    write_json(out_dir / "tokenizer_summary.json", summary)
    if args.tokenizer_dump:
        args.tokenizer_dump.parent.mkdir(parents=True, exist_ok=True)
        args.tokenizer_dump.write_text(full, encoding="utf-8")
        log(f"full backend tokenizer JSON -> {args.tokenizer_dump}")

    if "tokens" not in skip:
        write_json(out_dir / "tokens.json", make_tokens(tok, alternative_tokenizer(tok, gtok_meta)))
    if "chat" not in skip:
        write_json(out_dir / "chat.json", make_chat(tok))

    log("loading model (dequantizing GGUF to float32)")
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        gdir, gguf_file=gfile, dtype=torch.float32, attn_implementation=ATTN_IMPL
    )
    model.eval()
    load_s = time.time() - t0
    log(f"model loaded in {load_s:.1f}s")
    cfg = model.config

    rope_params = getattr(cfg, "rope_parameters", None)
    rope_theta = getattr(cfg, "rope_theta", None)
    if rope_theta is None and isinstance(rope_params, dict):
        rope_theta = rope_params.get("rope_theta")
    meta = {
        "model_id": args.model_id,
        "gguf_file": gfile,
        "gguf_sha256": digest,
        "gguf_size_bytes": gguf_path.stat().st_size,
        "config": {
            "model_type": cfg.model_type,
            "architectures": getattr(cfg, "architectures", None),
            "hidden_size": cfg.hidden_size,
            "intermediate_size": getattr(cfg, "intermediate_size", None),
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": getattr(cfg, "num_key_value_heads", None),
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            "rope_theta": rope_theta,
            "rope_scaling": getattr(cfg, "rope_scaling", None),
            "rope_parameters": rope_params,
            "rms_norm_eps": cfg.rms_norm_eps,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
            "tie_word_embeddings": getattr(cfg, "tie_word_embeddings", None),
            "attention_bias": getattr(cfg, "attention_bias", None),
            "mlp_bias": getattr(cfg, "mlp_bias", None),
            "hidden_act": getattr(cfg, "hidden_act", None),
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": getattr(cfg, "pad_token_id", None),
        },
        "config_full": json.loads(cfg.to_json_string(use_diff=False)),
        "lm_head_tied_in_memory": bool(
            model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        ),
        "has_qkv_bias": bool(getattr(model.model.layers[0].self_attn.q_proj, "bias", None) is not None),
        "gguf": gsum,
        "runtime": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": getattr(gguf_mod, "__version__", None) or _dist_version("gguf"),
            "tokenizers": _dist_version("tokenizers"),
            "numpy": np.__version__,
            "torch_num_threads": torch.get_num_threads(),
            "dtype": "float32",
            "attn_implementation": ATTN_IMPL,
            "model_load_seconds": round(load_s, 1),
        },
        "command": "python " + " ".join(shlex.quote(a) for a in [_rel(sys.argv[0], repo_root)] + sys.argv[1:]),
        "notes": [
            "Weights are the GGUF tensors dequantized by transformers to float32; for llama-arch GGUF "
            "transformers reverses llama.cpp's Q/K row permutation itself.",
            "Hidden states come from forward hooks: index 0 = embedding output, i = output of decoder "
            "layer i-1 (pre final norm); see forward.json.",
        ],
    }
    write_json(out_dir / "meta.json", meta)

    cap = HiddenCapture(model)
    if "forward" not in skip:
        write_json(out_dir / "forward.json", make_forward(model, tok, cap))
    cap.remove()
    if "batch" not in skip:
        log("batch")
        write_json(out_dir / "batch.json", make_batch(model, tok))
    if "generate" not in skip:
        write_json(out_dir / "generate.json", make_generate(model, tok))
    log("done")


def _dist_version(name: str):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def _rel(p: str, root: Path) -> str:
    try:
        return os.path.relpath(Path(p).resolve(), root)
    except Exception:
        return p


if __name__ == "__main__":
    main()
