"""Parity of our OLMoE implementation with Hugging Face transformers' OlmoeForCausalLM.

Builds a tiny random OlmoeForCausalLM (fixed seed, fp32, non-trivial norm weights), saves it with
save_pretrained (safetensors), imports it with `convert_hf --from_hf`, evaluates it with our `eval
--dump_logits` on a token file written here, and compares with transformers on the same ids:
  logits max |diff| <= 1e-4, mean cross-entropy |diff| <= 1e-5, router logits per layer max |diff| <= 1e-4.
Then exports with `convert_hf --to_hf`, reloads with OlmoeForCausalLM.from_pretrained and checks that it
reproduces the original logits (<= 1e-5). Finally checks that configs we cannot represent are refused
with a one-line error naming the config.json key.

  hf_parity_test.py --convert_hf=BIN --eval=BIN --tmp=DIR
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import OlmoeConfig, OlmoeForCausalLM  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, EXPERTS, TOP_K, INTERMEDIATE = 256, 64, 2, 4, 8, 2, 32
BATCH, SEQ = 3, 24

LOGITS_TOL, LOSS_TOL, ROUTER_TOL, ROUNDTRIP_TOL = 1e-4, 1e-5, 1e-4, 1e-5


def run(cmd, expect_ok=True):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and proc.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def make_model(config_kwargs=None):
    torch.manual_seed(1234)
    config = OlmoeConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
        max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.1,
        norm_topk_prob=False, tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
        **(config_kwargs or {}))
    model = OlmoeForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        # Norm weights start at 1; perturb them so that a misplaced or missing norm shows in the logits.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    return model


def hf_forward(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True)
    return out.logits.float(), [r.float() for r in out.router_logits]


def check(name, value, tol, failures):
    status = "ok" if value <= tol else "FAIL"
    print(f"{name}: {value:.3e} (tolerance {tol:.0e}) {status}")
    if value > tol:
        failures.append(name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--convert_hf", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--tmp", required=True)
    args = parser.parse_args()
    tmp = args.tmp
    os.environ.setdefault("HF_HOME", os.path.join(tmp, "hf_home"))
    failures = []

    model = make_model()
    hf_dir, ours_dir, back_dir = (os.path.join(tmp, d) for d in ("hf", "ours", "hf_back"))
    model.save_pretrained(hf_dir, safe_serialization=True)
    assert os.path.exists(os.path.join(hf_dir, "model.safetensors")), os.listdir(hf_dir)

    # Token file: BATCH contiguous windows of SEQ + 1 tokens (raw little-endian uint16).
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, VOCAB, size=BATCH * SEQ + 1, dtype=np.uint16)
    data_path = os.path.join(tmp, "tokens.bin")
    tokens.astype("<u2").tofile(data_path)
    ids = torch.stack([torch.from_numpy(tokens[b * SEQ:(b + 1) * SEQ].astype(np.int64)) for b in range(BATCH)])
    targets = torch.stack([torch.from_numpy(tokens[b * SEQ + 1:(b + 1) * SEQ + 1].astype(np.int64)) for b in range(BATCH)])

    run([args.convert_hf, f"--from_hf={hf_dir}", f"--out={ours_dir}"])
    dump_path = os.path.join(tmp, "dump.safetensors")
    proc = run([args.eval, f"--checkpoint={ours_dir}", f"--data={data_path}", "--dtype=uint16", f"--seq_len={SEQ}",
                f"--batch_size={BATCH}", f"--dump_logits={dump_path}", "--threads=1"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    dump = load_file(dump_path)

    hf_logits, hf_router = hf_forward(model, ids)
    hf_loss = F.cross_entropy(hf_logits.double().reshape(-1, VOCAB), targets.reshape(-1)).item()
    if not torch.equal(dump["input_ids"], ids) or not torch.equal(dump["targets"], targets):
        failures.append("input_ids/targets differ from the windows of the token file")
    print(f"shapes: ours logits {tuple(dump['logits'].shape)}, hf {tuple(hf_logits.shape)}; "
          f"tokens scored {result['tokens']}, loss ours {result['loss']:.8f} hf {hf_loss:.8f}")
    if dump["logits"].shape != hf_logits.shape or result["tokens"] != BATCH * SEQ:
        sys.exit("FAIL: shape mismatch")
    check("logits max |diff|", (dump["logits"] - hf_logits).abs().max().item(), LOGITS_TOL, failures)
    check("cross-entropy |diff|", abs(result["loss"] - hf_loss), LOSS_TOL, failures)
    if len(hf_router) != LAYERS:
        sys.exit(f"FAIL: transformers returned {len(hf_router)} router logit tensors, expected {LAYERS}")
    for layer in range(LAYERS):
        ours = dump[f"router_logits.{layer}"]
        if ours.shape != hf_router[layer].shape:
            sys.exit(f"FAIL: router_logits.{layer} shape {tuple(ours.shape)} vs {tuple(hf_router[layer].shape)}")
        check(f"router logits layer {layer} max |diff|", (ours - hf_router[layer]).abs().max().item(), ROUTER_TOL,
              failures)
    # The comparison must be able to fail: a random model's logits are far from another's.
    spread = (hf_logits - hf_logits.mean()).abs().max().item()
    if spread < 100 * LOGITS_TOL:
        failures.append(f"logits too flat to compare ({spread:.2e})")

    run([args.convert_hf, f"--to_hf={back_dir}", f"--from={ours_dir}"])
    back = OlmoeForCausalLM.from_pretrained(back_dir).to(torch.float32).eval()
    back_logits, back_router = hf_forward(back, ids)
    check("round trip logits max |diff|", (back_logits - hf_logits).abs().max().item(), ROUNDTRIP_TOL, failures)
    check("round trip router logits max |diff|",
          max((a - b).abs().max().item() for a, b in zip(back_router, hf_router)), ROUNDTRIP_TOL, failures)
    with open(os.path.join(back_dir, "config.json")) as f:
        back_config = json.load(f)
    if back_config.get("model_type") != "olmoe" or back_config.get("architectures") != ["OlmoeForCausalLM"]:
        failures.append(f"exported config.json: model_type {back_config.get('model_type')}, "
                        f"architectures {back_config.get('architectures')}")

    # A sharded checkpoint (model.safetensors.index.json) imports to the same weights.
    sharded_dir, sharded_ours = os.path.join(tmp, "hf_sharded"), os.path.join(tmp, "ours_sharded")
    model.save_pretrained(sharded_dir, safe_serialization=True, max_shard_size="100KB")
    shards = [f for f in os.listdir(sharded_dir) if f.endswith(".safetensors")]
    if not os.path.exists(os.path.join(sharded_dir, "model.safetensors.index.json")) or len(shards) < 2:
        failures.append(f"save_pretrained did not shard: {sorted(os.listdir(sharded_dir))}")
    run([args.convert_hf, f"--from_hf={sharded_dir}", f"--out={sharded_ours}"])
    single, sharded = load_file(os.path.join(ours_dir, "model.safetensors")), load_file(
        os.path.join(sharded_ours, "model.safetensors"))
    same = single.keys() == sharded.keys() and all(torch.equal(single[k], sharded[k]) for k in single)
    print(f"sharded import ({len(shards)} shards) equals single-file import: {same}")
    if not same:
        failures.append("sharded import differs")
    expected_keys = 3 + LAYERS * (9 + 3 * EXPERTS)
    if len(single) != expected_keys or "blocks.1.moe.experts.7.w_down" not in single:
        failures.append(f"imported keys: {len(single)}, expected {expected_keys}")

    # A model HF cannot represent is refused on export with one line naming the field.
    hybrid_dir = os.path.join(tmp, "ours_hybrid")
    os.makedirs(hybrid_dir)
    with open(os.path.join(ours_dir, "config.textproto")) as f:
        text = f.read()
    with open(os.path.join(hybrid_dir, "config.textproto"), "w") as f:
        f.write(text.replace("strategy: QK_NORM", "strategy: HYBRID_NORM"))
    os.symlink(os.path.join(ours_dir, "model.safetensors"), os.path.join(hybrid_dir, "model.safetensors"))
    proc = run([args.convert_hf, f"--to_hf={os.path.join(tmp, 'hf_hybrid')}", f"--from={hybrid_dir}"], expect_ok=False)
    err = proc.stderr.strip()
    ok = proc.returncode == 1 and len(err.splitlines()) == 1 and "model.norm.strategy (HYBRID_NORM)" in err
    print(f"export refuses HYBRID_NORM: {'ok' if ok else 'FAIL'}: {err}")
    if not ok:
        failures.append("export refusal")

    # Configs we cannot represent are refused with one line naming the key.
    for key, value in [("num_key_value_heads", 2), ("clip_qkv", 8.0), ("attention_bias", True),
                       ("tie_word_embeddings", True), ("rope_scaling", {"rope_type": "linear", "factor": 2.0})]:
        bad_dir = os.path.join(tmp, f"bad_{key}")
        os.makedirs(bad_dir, exist_ok=True)
        with open(os.path.join(hf_dir, "config.json")) as f:
            config = json.load(f)
        config[key] = value
        with open(os.path.join(bad_dir, "config.json"), "w") as f:
            json.dump(config, f)
        os.symlink(os.path.join(hf_dir, "model.safetensors"), os.path.join(bad_dir, "model.safetensors"))
        proc = run([args.convert_hf, f"--from_hf={bad_dir}", f"--out={os.path.join(tmp, 'bad_out_' + key)}"],
                   expect_ok=False)
        err = proc.stderr.strip()
        ok = proc.returncode == 1 and len(err.splitlines()) == 1 and key in err and "config.json" in err
        print(f"refuses {key}={json.dumps(value)}: {'ok' if ok else 'FAIL'}: {err}")
        if not ok:
            failures.append(f"refusal of {key}")

    if failures:
        sys.exit("FAIL: " + "; ".join(failures))
    print("PASS")


if __name__ == "__main__":
    main()
