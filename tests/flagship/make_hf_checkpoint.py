"""Writes a random OLMoE checkpoint laid out as the Hugging Face Hub ships it, tensor by tensor.

config.json (model_type "olmoe"), model-0000N-of-0000M.safetensors shards in bf16 and
model.safetensors.index.json (metadata.total_size, weight_map), with OlmoeForCausalLM's tensor names. Each
shard's header is written first and then its tensors one at a time, so the flagship (6.9B parameters, 13.8 GB)
is written at disk speed with 64 MiB of values in memory. Values: N(0, 0.02^2) truncated to bf16 (norm weights
1 + N(0, 0.02^2)), read cyclically from a pool of 2^24 values drawn from --seed, starting at an offset given by
the tensor's name (so tensors differ, and a tensor's bytes depend on --seed and its name only).

  make_hf_checkpoint.py --out DIR [--preset flagship|tiny] [--shards M] [--seed S] [--layers L]
"""
import argparse
import json
import os
import struct
import zlib

import numpy as np

PRESETS = {
    # OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924).
    "flagship": dict(vocab=50304, d=2048, layers=16, heads=16, experts=64, top_k=8, f=1024, max_pos=4096),
    "tiny": dict(vocab=96, d=32, layers=2, heads=4, experts=4, top_k=2, f=16, max_pos=64),
}


def tensors(p):
    """(name, shape, is_norm) in the Hub's order."""
    d, f, E, V = p["d"], p["f"], p["experts"], p["vocab"]
    out = [("model.embed_tokens.weight", (V, d), False)]
    for i in range(p["layers"]):
        pre = "model.layers.%d." % i
        out += [(pre + "input_layernorm.weight", (d,), True), (pre + "post_attention_layernorm.weight", (d,), True)]
        for n in ("q", "k", "v", "o"):
            out.append((pre + "self_attn.%s_proj.weight" % n, (d, d), False))
        out += [(pre + "self_attn.q_norm.weight", (d,), True), (pre + "self_attn.k_norm.weight", (d,), True)]
        out.append((pre + "mlp.gate.weight", (E, d), False))
        for e in range(E):
            ep = pre + "mlp.experts.%d." % e
            out += [(ep + "gate_proj.weight", (f, d), False), (ep + "up_proj.weight", (f, d), False),
                    (ep + "down_proj.weight", (d, f), False)]
    out += [("model.norm.weight", (d,), True), ("lm_head.weight", (V, d), False)]
    return out


POOL = 1 << 24  # bf16 values per pool


def pools(seed):
    """Two pools of random bf16 bits: N(0, 0.02^2) for weights and 1 + N(0, 0.02^2) for norm weights."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size=POOL, dtype=np.float32) * np.float32(0.02)
    to_bf16 = lambda v: (v.view(np.uint32) >> 16).astype(np.uint16)  # the top half of the fp32 bits
    return to_bf16(x), to_bf16(x + np.float32(1.0))


def write_values(fh, name, shape, pool):
    """Writes prod(shape) bf16 values: the pool read cyclically from an offset that depends on the name."""
    n = int(np.prod(shape))
    at = zlib.crc32(name.encode()) % POOL
    while n > 0:
        k = min(n, POOL - at)
        fh.write(memoryview(pool[at:at + k]))
        n -= k
        at = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layers", type=int, default=0, help="override the preset's layer count")
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.layers:
        p["layers"] = a.layers
    os.makedirs(a.out, exist_ok=True)
    config = {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": p["vocab"],
        "hidden_size": p["d"], "intermediate_size": p["f"], "num_hidden_layers": p["layers"],
        "num_attention_heads": p["heads"], "num_key_value_heads": p["heads"], "hidden_act": "silu",
        "max_position_embeddings": p["max_pos"], "initializer_range": 0.02, "rms_norm_eps": 1e-5,
        "use_cache": True, "pad_token_id": 1, "bos_token_id": None, "eos_token_id": 50279,
        "tie_word_embeddings": False, "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
        "attention_dropout": 0.0, "clip_qkv": None, "num_experts_per_tok": p["top_k"], "num_experts": p["experts"],
        "output_router_logits": False, "router_aux_loss_coef": 0.01, "norm_topk_prob": False,
        "torch_dtype": "bfloat16",
    }
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)

    weight_pool, norm_pool = pools(a.seed)
    items = tensors(p)
    sizes = [2 * int(np.prod(s)) for _, s, _ in items]
    total = sum(sizes)
    # Consecutive tensors into shards of about total / M bytes (as save_pretrained's max_shard_size does).
    shards, current, acc = [], [], 0
    for item, n in zip(items, sizes):
        if current and acc + n > total / a.shards and len(shards) < a.shards - 1:
            shards.append(current)
            current, acc = [], 0
        current.append(item)
        acc += n
    shards.append(current)
    weight_map = {}
    for si, shard in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (si + 1, len(shards))
        header, offset = {}, 0
        for name, shape, _ in shard:
            n = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        with open(os.path.join(a.out, fname), "wb") as fh:
            fh.write(struct.pack("<Q", len(text)))
            fh.write(text)
            for name, shape, is_norm in shard:
                write_values(fh, name, shape, norm_pool if is_norm else weight_pool)
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    print(json.dumps({"shards": len(shards), "tensors": len(items), "bytes": total}))


if __name__ == "__main__":
    main()
