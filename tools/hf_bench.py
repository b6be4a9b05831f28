"""Training-step timing of Hugging Face transformers' OlmoeForCausalLM (the side-by-side of tools/bench).

Loads an HF OLMoE directory (written by `convert_hf --to_hf` from our model), a fixed batch of int64 ids
and targets [B, S] (raw little-endian), and times forward + backward + grad-norm clip + AdamW steps in
fp32 with the given intra-op threads (with --autocast: forward and loss under torch.autocast("cpu", bfloat16),
transformers' mixed-precision path on the CPU; weights, gradients and AdamW stay fp32). The loss is the token-mean cross-entropy against OUR targets (so both
sides score the same pairs) plus router_aux_loss_coef * HF's load-balancing loss, as HF trains OLMoE.
AdamW is torch.optim.AdamW(fused=True), the fastest CPU AdamW torch has, with our hyper-parameters.

  hf_bench.py --hf_dir=D --inputs=F --targets=F --batch=B --seq=S --threads=N [--autocast] [--steps=K | --serve]

--steps=K prints one JSON object: {"seconds": [...], "lm_loss": [...], "tokens_per_s": median}.
--serve prints `ready {json}` and then answers each stdin line `step N` with one JSON line (the parent,
tools/bench, alternates our steps with these); `quit` or end of input ends it.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import OlmoeForCausalLM  # noqa: E402


def load_ids(path, batch, seq):
    ids = np.fromfile(path, dtype="<i8")
    if ids.size != batch * seq:
        sys.exit(f"{path}: {ids.size} ids, expected {batch} x {seq}")
    return torch.from_numpy(ids.reshape(batch, seq).copy())


class Stepper:
    def __init__(self, args):
        torch.set_num_threads(args.threads)
        self.model = OlmoeForCausalLM.from_pretrained(args.hf_dir, torch_dtype=torch.float32,
                                                      attn_implementation="sdpa")
        self.model.train()
        self.model.config.use_cache = False
        self.inputs = load_ids(args.inputs, args.batch, args.seq)
        self.targets = load_ids(args.targets, args.batch, args.seq)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                                     weight_decay=args.weight_decay, fused=True)
        self.clip = args.grad_clip
        self.vocab = self.model.config.vocab_size
        self.aux_coef = self.model.config.router_aux_loss_coef
        self.autocast = args.autocast

    def step(self):
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(input_ids=self.inputs, output_router_logits=True, use_cache=False)
            lm_loss = F.cross_entropy(out.logits.reshape(-1, self.vocab).float(), self.targets.reshape(-1))
            loss = lm_loss + self.aux_coef * out.aux_loss
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        return time.perf_counter() - start, lm_loss.item()

    def steps(self, n):
        seconds, losses = [], []
        for _ in range(n):
            s, l = self.step()
            seconds.append(s)
            losses.append(l)
        return {"seconds": seconds, "lm_loss": losses}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hf_dir", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--targets", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast for forward and loss")
    args = p.parse_args()
    stepper = Stepper(args)
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "attn_implementation": stepper.model.config._attn_implementation, "optimizer": "AdamW(fused=True)",
            "autocast_bf16": args.autocast}
    if not args.serve:
        result = stepper.steps(args.steps)
        result["tokens_per_s"] = args.batch * args.seq / statistics.median(result["seconds"])
        result.update(info)
        print(json.dumps(result))
        return
    print("ready " + json.dumps(info), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "step" and len(words) == 2:
            print(json.dumps(stepper.steps(int(words[1]))), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)


if __name__ == "__main__":
    main()
