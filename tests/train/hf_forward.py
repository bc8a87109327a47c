#!/usr/bin/env python3
"""An independent check of `moe export`: reads the Hugging Face Mixtral files with nothing but the
safetensors spec (struct + json + numpy, not our writer's code), runs Mixtral's forward pass in float64
numpy from config.json alone, and prints the mean next-token loss over windows i = 0..N-1 of a token
file, window i being tokens [i*L, i*L+L], as `moe eval` defines it. With --compare-logits, also the
largest difference of `moe eval --logits`'s logits from its own, relative to each window's largest logit.

    hf_forward.py EXPORT_DIR TOKENS.bin SEQ_LEN WINDOWS [uint16|uint32] [--compare-logits LOGITS.safetensors]
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    data = blob[8 + length:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = data[begin:end]
        if entry["dtype"] == "BF16":  # the upper half of a float32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<"))
        out[name] = array.reshape(entry["shape"]).astype(np.float64)
    return out


def load(export_dir):
    index = os.path.join(export_dir, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(index):
        with open(index) as f:
            for shard in sorted(set(json.load(f)["weight_map"].values())):
                weights.update(read_safetensors(os.path.join(export_dir, shard)))
    else:
        weights = read_safetensors(os.path.join(export_dir, "model.safetensors"))
    with open(os.path.join(export_dir, "config.json")) as f:
        return json.load(f), weights


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):  # x [S, heads, hd]; Llama/Mixtral rotate-half
    S, _, hd = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    angles = np.outer(np.arange(S), inv_freq)
    cos = np.concatenate([np.cos(angles)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, -1)[:, None, :]
    rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rotated * sin


def forward(cfg, W, tokens):
    S = len(tokens)
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // H
    eps, theta, K = cfg["rms_norm_eps"], cfg["rope_theta"], cfg["num_experts_per_tok"]
    x = W["model.embed_tokens.weight"][tokens]
    causal = np.triu(np.full((S, S), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(S, H, hd), theta)
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(S, KV, hd), theta)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(S, KV, hd)
        out = np.empty((S, H, hd))
        for head in range(H):
            kv = head // (H // KV)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(hd) + causal
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[:, head] = probs @ v[:, kv]
        x = x + out.reshape(S, H * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        logits = h @ W[p + "block_sparse_moe.gate.weight"].T
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        y = np.zeros_like(h)
        for t in range(S):
            chosen = np.argsort(-probs[t], kind="stable")[:K]
            weights = probs[t, chosen] / probs[t, chosen].sum()
            for e, w in zip(chosen, weights):
                e_ = p + f"block_sparse_moe.experts.{e}."
                gate = h[t] @ W[e_ + "w1.weight"].T
                up = h[t] @ W[e_ + "w3.weight"].T
                y[t] += w * ((gate / (1 + np.exp(-gate)) * up) @ W[e_ + "w2.weight"].T)
        x = x + y
    x = rms_norm(x, W["model.norm.weight"], eps)
    return x @ W["lm_head.weight"].T


def main():
    args = sys.argv[1:]
    theirs = None  # --compare-logits FILE: `moe eval --logits` output, [N, L, vocab]
    if "--compare-logits" in args:
        at = args.index("--compare-logits")
        theirs = read_safetensors(args[at + 1])["logits"]
        del args[at:at + 2]
    export_dir, data, L, N = args[0], args[1], int(args[2]), int(args[3])
    dtype = args[4] if len(args) > 4 else "uint16"
    tokens = np.fromfile(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.int64)
    cfg, W = load(export_dir)
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    total, worst = 0.0, 0.0
    for i in range(N):
        window = tokens[i * L:i * L + L + 1]
        logits = forward(cfg, W, window[:-1])
        if theirs is not None:  # the largest difference, relative to the window's largest logit
            worst = max(worst, float(np.abs(theirs[i] - logits).max() / np.abs(logits).max()))
        m = logits.max(-1, keepdims=True)
        log_probs = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        total -= log_probs[np.arange(L), window[1:]].sum()
    out = {"loss": total / (N * L), "tokens": N * L}
    if theirs is not None:
        assert theirs.shape == (N, L, cfg["vocab_size"]), theirs.shape
        out["logits_max_relative_difference"] = worst
    print(json.dumps(out))


if __name__ == "__main__":
    main()
