#!/usr/bin/env python3
"""Writes a small random Hugging Face Mixtral folder with numpy alone (struct + json, not moe's writer), for
`moe import`'s tests: config.json and model.safetensors, or N shards with model.safetensors.index.json.
Options spoil it in one way each, for the refusal cases.

    hf_write.py OUT [--dtype F32|BF16|F16] [--shards N] [--seed S] [--set KEY=JSON ...]
                [--drop NAME] [--extra NAME] [--reshape NAME] [--int NAME]
"""
import argparse
import json
import os
import struct

import numpy as np

CONFIG = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 256, "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "hidden_act": "silu", "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
    "use_cache": True, "torch_dtype": "float32", "transformers_version": "4.46.0",
}


def tensors(cfg, rng):
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = D // cfg["num_attention_heads"]
    KV = cfg["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": rng.normal(0, 1, (V, D))}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out[p + "input_layernorm.weight"] = rng.uniform(0.5, 1.5, D)
        out[p + "post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, D)
        for name, rows in (("q_proj", D), ("k_proj", KV), ("v_proj", KV), ("o_proj", D)):
            out[p + f"self_attn.{name}.weight"] = rng.normal(0, D ** -0.5, (rows, D))
        out[p + "block_sparse_moe.gate.weight"] = rng.normal(0, 1, (cfg["num_local_experts"], D))
        for e in range(cfg["num_local_experts"]):
            q = p + f"block_sparse_moe.experts.{e}."
            out[q + "w1.weight"] = rng.normal(0, D ** -0.5, (F, D))
            out[q + "w3.weight"] = rng.normal(0, D ** -0.5, (F, D))
            out[q + "w2.weight"] = rng.normal(0, F ** -0.5, (D, F))
    out["model.norm.weight"] = rng.uniform(0.5, 1.5, D)
    out["lm_head.weight"] = rng.normal(0, D ** -0.5, (V, D))
    return out


def encode(array, dtype):
    if dtype == "F32":
        return array.astype("<f4").tobytes()
    if dtype == "F16":
        return array.astype("<f2").tobytes()
    if dtype == "I32":
        return array.astype("<i4").tobytes()
    # BF16: float32 rounded to nearest even in its upper 16 bits.
    bits = array.astype("<f4").view("<u4").astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()


def write_safetensors(path, items):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (array, dtype) in items:
        blob = encode(array, dtype)
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    a = argparse.ArgumentParser()
    a.add_argument("out")
    a.add_argument("--dtype", default="F32", choices=["F32", "BF16", "F16"])
    a.add_argument("--shards", type=int, default=1)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--set", action="append", default=[], help="KEY=JSON in config.json")
    a.add_argument("--drop", help="leave this tensor out")
    a.add_argument("--extra", help="add this tensor")
    a.add_argument("--reshape", help="give this tensor one more row")
    a.add_argument("--int", help="store this tensor as int32")
    o = a.parse_args()
    cfg = dict(CONFIG)
    for item in o.set:
        key, value = item.split("=", 1)
        cfg[key] = json.loads(value)
    w = tensors(CONFIG, np.random.default_rng(o.seed))
    if o.drop:
        del w[o.drop]
    if o.extra:
        w[o.extra] = np.zeros(4)
    if o.reshape:
        w[o.reshape] = np.concatenate([w[o.reshape], w[o.reshape][:1]])
    items = [(n, (t, "I32" if n == o.int else o.dtype)) for n, t in w.items()]
    os.makedirs(o.out)
    with open(os.path.join(o.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if o.shards == 1:
        write_safetensors(os.path.join(o.out, "model.safetensors"), items)
        return
    weight_map = {}
    for i in range(o.shards):
        name = f"model-{i + 1:05d}-of-{o.shards:05d}.safetensors"
        part = items[i::o.shards]
        write_safetensors(os.path.join(o.out, name), part)
        weight_map.update({n: name for n, _ in part})
    with open(os.path.join(o.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


if __name__ == "__main__":
    main()
