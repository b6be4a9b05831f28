"""The GPU check of tools/gpu/check.sh (which documents the parts and flags). Standard library only, apart
from the `peak` part, which imports torch in a child python3.

Every part runs its commands with a timeout (the smaller of its own and what is left of --budget), records
status ok / failed / timeout / skipped, its figures and the tail of its log, and never stops the others.
"""
import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

H200_MIB = 143771  # nvidia-smi's memory.total of the H200 (the dry run plans against it)
OLMOE_TIMEOUT_S = 170  # one OLMoE attempt: CPU init of up to 6.9e9 parameters, the copy to the GPU, 6 steps


class Check:
    def __init__(self, args):
        self.args = args
        self.dry = args.cpu_dry_run
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget
        self.bundle = args.bundle
        self.work = tempfile.mkdtemp(prefix="hybridmoe-check.")
        self.results = {
            "tool": "tools/gpu/check.sh",
            "mode": "cpu-dry-run" if self.dry else "gpu",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bundle": self.bundle,
            "budget_s": args.budget,
            "parts": {},
        }
        self.log_lines = []
        self.device = "CPU" if self.dry else "CUDA"

    # ---- helpers ----
    def say(self, msg):
        line = f"[check {time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    def left(self):
        return self.deadline - time.monotonic()

    def bin(self, name):
        return os.path.join(self.bundle, "bin", name)

    def run(self, name, cmd, timeout, env=None):
        """Runs cmd (list) in the bundle root, output to WORK/name.log. -> dict(status, rc, seconds, log)."""
        # Parts before olmoe leave it its own timeout: the budget squeezes them, not the headline run.
        timeout = min(timeout, self.left() - 5 - self.reserve)
        log = os.path.join(self.work, name + ".log")
        if timeout < 3:
            with open(log, "w") as f:
                f.write("not run: out of time\n")
            return {"status": "skipped", "reason": "out of time (budget)", "log": name + ".log", "rc": None, "seconds": 0}
        start = time.monotonic()
        with open(log, "w") as f:
            f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
            f.flush()
            p = subprocess.Popen(cmd, cwd=self.bundle, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
            try:
                rc = p.wait(timeout=timeout)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc, status = None, "timeout"
        r = {"status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1), "timeout_s": round(timeout),
             "log": name + ".log", "command": " ".join(shlex.quote(c) for c in cmd)}
        if status != "ok":
            r["log_tail"] = tail(log, 12)
        return r

    def record(self, part, r):
        self.results["parts"][part] = r
        extra = ""
        if r.get("reason"):
            extra = f" ({r['reason']})"
        self.say(f"{part}: {r['status']}{extra}")

    # ---- parts ----
    def part_env(self):
        r = {"status": "ok", "cpu_cores": os.cpu_count()}
        try:
            r["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
        except (ValueError, OSError):
            r["glibc"] = "?"
        try:
            with open(os.path.join(self.bundle, "MANIFEST.txt")) as f:
                manifest = f.read()
            m = re.search(r"needs glibc >= ([0-9.]+)", manifest)
            r["bundle_needs_glibc"] = m.group(1) if m else "?"
            r["bundle_commit"] = (re.search(r"^commit (.*)$", manifest, re.M) or [None, "?"])[1]
            have = tuple(int(x) for x in r["glibc"].split()[-1].split("."))
            need = tuple(int(x) for x in r["bundle_needs_glibc"].split("."))
            if have < need:
                r["status"] = "failed"
                r["reason"] = f"glibc {have} older than the bundle needs ({need})"
        except (OSError, ValueError, AttributeError) as e:
            r["manifest_error"] = str(e)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=30)
            r["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            try:
                name, mem, driver = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")]
                r.update(gpu=name, gpu_memory_mib=int(mem), driver=driver)
            except (ValueError, IndexError):
                pass
        else:
            r["nvidia_smi"] = "not found"
            if not self.dry:
                r["status"] = "failed"
                r["reason"] = "nvidia-smi not found: no GPU?"
        r["torch_lib"] = os.environ.get("HYBRIDMOE_TORCH_LIB", "(from python3, in env.sh)")
        self.gpu_mib = r.get("gpu_memory_mib") or H200_MIB
        if self.dry:
            r["gpu_memory_mib_assumed_for_planning"] = self.gpu_mib
        self.record("env", r)

    def part_units(self):
        tests = [("linkage_test", [os.path.join(self.bundle, "libexec", "train")], 20),
                 ("cuda_device_test", [], 45), ("models_device_test", [], 20), ("parallel_device_test", [], 10)]
        r = {"status": "ok", "tests": {}}
        for name, extra, timeout in tests:
            xml = os.path.join(self.work, name + ".xml")
            t = self.run(name, [self.bin(name), "--gtest_output=xml:" + xml] + extra, timeout)
            t.update(gtest_counts(xml))
            if t["status"] == "ok" and t.get("tests", 0) > 0 and t.get("skipped") == t.get("tests"):
                t["status"] = "skipped" if self.dry else "failed"
                t["reason"] = "every test case skipped" + ("" if self.dry else " on the GPU machine (no CUDA device?)")
            if t["status"] == "ok" and not self.dry and name == "cuda_device_test" and t.get("skipped", 0):
                t["status"] = "failed"
                t["reason"] = "a CUDA test case skipped on the GPU machine"
            if name in ("linkage_test", "cuda_device_test"):
                t["printed"] = [l for l in tail(os.path.join(self.work, name + ".log"), 60)
                                if re.match(r"^(libcudart|NCCL runtime|.*needed by|.*libraries;|checkpointing|\d+ CUDA)", l)]
            r["tests"][name] = t
            if t["status"] in ("failed", "timeout"):
                r["status"] = "failed"
        self.record("units", r)

    def part_peak(self):
        n = 512 if self.dry else 8192
        reps = 2 if self.dry else 10
        code = PEAK_PY.replace("@N@", str(n)).replace("@REPS@", str(reps)).replace("@DEV@", "cpu" if self.dry else "cuda")
        py = os.path.join(self.work, "peak.py")
        with open(py, "w") as f:
            f.write(code)
        out = os.path.join(self.work, "peak.json")
        r = self.run("peak", [self.args.python, py, out], 60)
        try:
            with open(out) as f:
                r.update(json.load(f))
        except (OSError, ValueError):
            if r["status"] == "ok":
                r["status"] = "failed"
                r["reason"] = "no peak.json"
        self.peak_bf16 = r.get("bf16_tflops")
        self.peak_fp32 = r.get("fp32_tflops")
        self.record("peak", r)

    def part_tiny(self, part, device, precision):
        steps = 4 if self.dry else 100
        override = (f"parallel {{ device: {device} }} "
                    f"train {{ steps: {steps} eval_interval: 0 eval_batches: 2 precision: {precision} }} "
                    "logging { log_interval: 1 tensorboard: false } checkpoint { save_final: false }")
        run_dir = os.path.join(self.work, part)
        r = self.run(part, [self.bin("train"), "--config=configs/tiny.textproto", "--out_dir=" + run_dir,
                            "--override=" + override], 60 if device == "CPU" and not self.dry else 45)
        r["override"] = override
        m = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        r.update(steps_logged=len(m["loss"]), val_loss=m["val_loss"],
                 tokens_per_s_median=median(m["tokens_per_s"][1:] or m["tokens_per_s"]))
        if m["loss"]:
            r["loss_first_last"] = [m["loss"][0], m["loss"][-1]]
        if r["status"] == "ok" and len(m["loss"]) != steps:
            r["status"] = "failed"
            r["reason"] = f"{len(m['loss'])} of {steps} steps logged"
        self.metrics = getattr(self, "metrics", {})
        self.metrics[part] = m
        if part != "tiny_cpu" and "tiny_cpu" in self.metrics and m["loss"]:
            r["vs_cpu"] = compare(self.metrics["tiny_cpu"], m, precision)
            if r["status"] == "ok" and not r["vs_cpu"]["within_tolerance"]:
                r["status"] = "failed"
                r["reason"] = "losses differ from the CPU run's beyond tolerance"
        self.record(part, r)

    def part_bench(self, part, precision):
        out = os.path.join(self.work, part + ".json")
        cmd = [self.bin("bench"), "--config=configs/bench.textproto", f"--override=parallel {{ device: {self.device} }}",
               f"--override=train {{ precision: {precision} }}", "--sections=train", "--hf=off",
               "--rounds=" + ("1" if self.dry else "3"), "--warmup=" + ("1" if self.dry else "2"), "--json_out=" + out]
        r = self.run(part, cmd, 40 if not self.dry else 120)
        try:
            with open(out) as f:
                j = json.load(f)
            t = j.get("train", {})
            tps = t.get("tokens_per_s")
            r.update(tokens_per_s=tps, tokens_per_step=j.get("tokens_per_step"),
                     flops_per_token_train=j.get("flops_per_token_train"),
                     bench_mfu_vs_its_cpu_fp32_peak=t.get("mfu"))
            if tps and self.peak_bf16:
                r["mfu_vs_measured_bf16_peak"] = tps * j["flops_per_token_train"] / (self.peak_bf16 * 1e12)
            if tps and self.peak_fp32:
                r["mfu_vs_measured_fp32_peak"] = tps * j["flops_per_token_train"] / (self.peak_fp32 * 1e12)
        except (OSError, ValueError, KeyError, TypeError) as e:
            if r["status"] == "ok":
                r["status"] = "failed"
                r["reason"] = f"no bench JSON ({e})"
        self.record(part, r)

    def plan(self, name, config, override):
        out = os.path.join(self.work, name + ".plan.json")
        r = self.run(name + "_plan", [self.bin("plan"), "--config=" + config, "--override=" + override,
                                      "--format=json"], 20)
        try:
            # The log starts with the "$ command" line; the JSON follows.
            with open(os.path.join(self.work, name + "_plan.log")) as f:
                text = f.read()
            j = json.loads(text.split("\n", 1)[1])
            with open(out, "w") as f:
                json.dump(j, f)
            return j
        except (OSError, ValueError):
            return None

    def part_olmoe(self):
        self.reserve = 0
        config = "configs/olmoe_1b7b.textproto"
        bf16_ok = self.results["parts"].get("tiny_cuda_bf16", {}).get("status") == "ok"
        mb, seq = 2, 4096
        data = ('data { train { path: "data/corpus/train.bin" } validation: "data/corpus/val.bin" '
                f'micro_batch_size: {mb} grad_accum_steps: 1 }}')
        r = {"status": "failed", "config": config, "gpu_memory_mib": self.gpu_mib, "selection": [],
             "estimate": "plan's fp32 weights + gradients + AdamW moments; BF16 adds a bf16 copy of the weights and "
                         "its gradients (+1x weights); with checkpointing: one block's activations (plan's "
                         "no-checkpointing activations / n_layers), the kept block inputs (2 x n_layers x tokens x "
                         "d_model x 4 B) and the logits (3 x tokens x vocab x 4 B); fits when <= 92% of the GPU"}
        # The most layers that fit; at that size BF16 (when the tiny BF16 run passed) before FP32.
        chosen = None
        for layers in (16, 14, 12, 10, 8, 6, 4, 2):
            j = self.plan(f"olmoe_L{layers}", config, f"model {{ n_layers: {layers} }} " + data)
            if not j:
                r["reason"] = "plan failed"
                break
            mem = j["memory_per_rank_bytes"]
            tokens = mb * seq
            d, vocab = 2048, 50304
            ckpt_act = mem["activations"] // layers + layers * tokens * d * 4 * 2 + tokens * vocab * 4 * 3
            for precision in (["BF16", "FP32"] if bf16_ok else ["FP32"]):
                static = mem["weights"] + mem["gradients"] + mem["optimizer"]
                if precision == "BF16":
                    static += mem["weights"]
                est = static + ckpt_act
                row = {"n_layers": layers, "precision": precision, "total_params": j["total_params"],
                       "active_params": j["active_params"], "plan_memory_bytes": mem,
                       "estimate_with_checkpointing_bytes": est, "fits": est <= 0.92 * self.gpu_mib * 2**20,
                       "flops_per_token_train": j["flops_per_token_train"]}
                r["selection"].append(row)
                if row["fits"]:
                    chosen = row
                    break
            if chosen:
                break
        if chosen is None:
            r.setdefault("reason", "nothing fits by the estimate")
            self.record("olmoe", r)
            return
        precision = r["precision"] = chosen["precision"]
        attempts = []
        layers = chosen["n_layers"]
        while True:
            a = self.olmoe_attempt(config, layers, data, precision)
            attempts.append(a)
            oom = a["status"] == "failed" and any("out of memory" in l.lower() for l in a.get("log_tail", []))
            if a["status"] == "ok" or not oom or layers <= 4 or self.left() < 100:
                break
            layers -= 4
        r["attempts"] = attempts
        last = attempts[-1]
        r["status"] = last["status"]
        r["n_layers_run"] = last["n_layers"]
        row = next((x for x in r["selection"] if x["n_layers"] == last["n_layers"] and x["precision"] == precision),
                   None)
        if row is None:
            j = self.plan(f"olmoe_L{last['n_layers']}", config, f"model {{ n_layers: {last['n_layers']} }} " + data)
            row = {"n_layers": last["n_layers"], "total_params": j and j["total_params"],
                   "plan_memory_bytes": j and j["memory_per_rank_bytes"],
                   "flops_per_token_train": j and j["flops_per_token_train"]}
        r["plan"] = row
        tps = last.get("tokens_per_s_median")
        if tps and self.peak_bf16 and row.get("flops_per_token_train") and not self.dry:
            r["mfu_vs_measured_bf16_peak"] = tps * row["flops_per_token_train"] / (self.peak_bf16 * 1e12)
            if self.peak_fp32:
                r["mfu_vs_measured_fp32_peak"] = tps * row["flops_per_token_train"] / (self.peak_fp32 * 1e12)
        peak = last.get("gpu_memory_used_peak_mib")
        if row.get("plan_memory_bytes"):
            pm = row["plan_memory_bytes"]
            r["memory_vs_plan"] = {
                "measured_peak_mib_over_baseline": None if peak is None else
                peak - (last.get("gpu_memory_used_baseline_mib") or 0),
                "plan_static_mib (weights+grads+AdamW, fp32)": (pm["weights"] + pm["gradients"] + pm["optimizer"]) / 2**20,
                "plan_total_no_checkpointing_mib": pm["total"] / 2**20,
                "estimate_with_checkpointing_mib": row.get("estimate_with_checkpointing_bytes", 0) / 2**20,
            }
        if r["status"] != "ok":
            r["reason"] = last.get("reason") or ("the run " + last["status"] + ": " +
                                                 ((last.get("log_tail") or ["?"])[-1])[:200])
        self.record("olmoe", r)

    def olmoe_attempt(self, config, layers, data, precision):
        steps = 2 if self.dry else 6
        model = f"model {{ n_layers: {layers} activation_checkpointing: true }}"
        if self.dry:  # OLMoE-shaped (vocab, norms, routing) but small enough for 2 CPU cores
            model = ("model { n_layers: 2 d_model: 128 n_heads: 2 activation_checkpointing: true "
                     "moe { num_experts: 8 top_k: 2 expert_hidden: 64 } }")
            data = data.replace("micro_batch_size: 2", "micro_batch_size: 1 seq_len: 128")
        override = (f"{model} {data} parallel {{ device: {self.device} }} "
                    f"train {{ steps: {steps} eval_interval: 0 eval_batches: 1 precision: {precision} }} "
                    "logging { log_interval: 1 tensorboard: false } checkpoint { save_final: false interval: 0 }")
        name = f"olmoe_L{layers}"
        run_dir = os.path.join(self.work, name)
        poll = MemoryPoller()
        poll.start()
        a = self.run(name, [self.bin("train"), "--config=" + config, "--out_dir=" + run_dir, "--override=" + override],
                     OLMOE_TIMEOUT_S if not self.dry else 200)
        poll.stop()
        a.update(n_layers=layers, override=override, **poll.result())
        m = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        a.update(steps_logged=len(m["loss"]), loss=m["loss"], tokens_per_s=m["tokens_per_s"],
                 tokens_per_s_median=median(m["tokens_per_s"][1:] or m["tokens_per_s"]))
        if a["status"] == "ok" and len(m["loss"]) != steps:
            a["status"] = "failed"
            a["reason"] = f"{len(m['loss'])} of {steps} steps logged"
        if self.dry:
            a["dry_run_model"] = model  # n_layers is the selection's figure; the dry run trained this instead
        return a

    # ---- all ----
    def main(self):
        parts = [("env", self.part_env), ("units", self.part_units), ("peak", self.part_peak),
                 ("tiny_cpu", lambda: self.part_tiny("tiny_cpu", "CPU", "FP32")),
                 ("tiny_cuda_fp32", lambda: self.part_tiny("tiny_cuda_fp32", self.device, "FP32")),
                 ("tiny_cuda_bf16", lambda: self.part_tiny("tiny_cuda_bf16", self.device, "BF16")),
                 ("bench_fp32", lambda: self.part_bench("bench_fp32", "FP32")),
                 ("bench_bf16", lambda: self.part_bench("bench_bf16", "BF16")), ("olmoe", self.part_olmoe)]
        want = set(self.args.parts.split(",")) if self.args.parts else None
        self.gpu_mib, self.peak_bf16, self.peak_fp32 = H200_MIB, None, None
        self.reserve = OLMOE_TIMEOUT_S if (not want or "olmoe" in want) and not self.dry else 0
        self.say(f"bundle {self.bundle}; mode {self.results['mode']}; budget {self.args.budget} s; work {self.work}")
        for name, fn in parts:
            if want and name not in want:
                continue
            self.say(f"--- {name}")
            try:
                fn()
            except Exception as e:  # a bug in one part must not lose the others' results
                self.record(name, {"status": "failed", "reason": f"check.py error: {type(e).__name__}: {e}"})
        self.results["seconds"] = round(time.monotonic() - self.t0, 1)
        self.results["all_ok"] = all(p["status"] in ("ok",) or (self.dry and p["status"] == "skipped")
                                     for p in self.results["parts"].values())
        self.write()
        return 0 if self.results["all_ok"] else 1

    def summary(self):
        P = self.results["parts"]
        lines = ["=== summary (" + self.results["mode"] + f", {self.results['seconds']} s)"]

        def fmt(x, f="{:.4g}"):
            return "-" if x is None else f.format(x)

        for name, p in P.items():
            s = f"{name:15s} {p['status']:8s}"
            if name == "env":
                s += f" gpu {p.get('gpu', '-')} {p.get('gpu_memory_mib', '-')} MiB driver {p.get('driver', '-')}; glibc {p.get('glibc')}"
            elif name == "units":
                s += " " + "; ".join(f"{k} {v['status']} ({v.get('tests', 0)} tests, {v.get('failures', 0)} failed, "
                                     f"{v.get('skipped', 0)} skipped)" for k, v in p.get("tests", {}).items())
            elif name == "peak":
                s += f" bf16 {fmt(p.get('bf16_tflops'))} TFLOP/s, fp32 {fmt(p.get('fp32_tflops'))} TFLOP/s on {p.get('device_name', '-')}"
            elif name.startswith("tiny"):
                s += f" {p.get('steps_logged', 0)} steps, loss first/last {p.get('loss_first_last', '-')}, val {fmt(p.get('val_loss'))}, {fmt(p.get('tokens_per_s_median'), '{:.0f}')} tok/s"
                v = p.get("vs_cpu")
                if v:
                    s += (f"; vs CPU: step-1 rel {fmt(v['step1_rel_diff'])}, max |d| {fmt(v['max_abs_diff'])}, "
                          f"last |d| {fmt(v['last_abs_diff'])} ({'within' if v['within_tolerance'] else 'BEYOND'} tolerance)")
            elif name.startswith("bench"):
                s += f" {fmt(p.get('tokens_per_s'), '{:.0f}')} tok/s, MFU {fmt(p.get('mfu_vs_measured_bf16_peak'), '{:.1%}')} of measured bf16 peak"
            elif name == "olmoe":
                m = p.get("memory_vs_plan", {})
                a = (p.get("attempts") or [{}])[-1]
                s += (f" {p.get('n_layers_run', '-')} layers, {p.get('precision')}, {fmt(a.get('tokens_per_s_median'), '{:.0f}')} tok/s, "
                      f"MFU {fmt(p.get('mfu_vs_measured_bf16_peak'), '{:.1%}')} of bf16 / "
                      f"{fmt(p.get('mfu_vs_measured_fp32_peak'), '{:.1%}')} of fp32 peak, peak GPU memory "
                      f"{fmt(m.get('measured_peak_mib_over_baseline'), '{:.0f}')} MiB vs estimate "
                      f"{fmt(m.get('estimate_with_checkpointing_mib'), '{:.0f}')} MiB")
            if p.get("reason"):
                s += f"  [{p['reason']}]"
            lines.append(s)
        lines.append(f"all ok: {self.results['all_ok']}")
        return lines

    def write(self):
        out = self.args.out
        json_path = out if out.endswith(".json") else os.path.join(out, "gpu_check.json")
        out_dir = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(out_dir, exist_ok=True)
        self.results["json"] = json_path
        with open(json_path, "w") as f:
            json.dump(self.results, f, indent=2, default=str)
        lines = self.summary()
        print("\n".join(lines), flush=True)
        with open(os.path.join(out_dir, "gpu_check.log"), "w") as f:
            f.write("\n".join(self.log_lines + lines) + "\n\n")
            for name, p in self.results["parts"].items():
                if p.get("log_tail"):
                    f.write(f"--- {name}: last lines of {p.get('log')}\n" + "\n".join(p["log_tail"]) + "\n")
        with tarfile.open(os.path.join(out_dir, "gpu_check_logs.tar.gz"), "w:gz") as tar:
            for root, _, files in os.walk(self.work):
                for fn in files:
                    if fn.endswith((".log", ".jsonl", ".xml", ".json", ".textproto")):
                        p = os.path.join(root, fn)
                        tar.add(p, arcname=os.path.relpath(p, self.work))
        print(f"wrote {json_path}, gpu_check.log, gpu_check_logs.tar.gz (work folder {self.work})", flush=True)


class MemoryPoller:
    """nvidia-smi memory.used of GPU 0 every 0.5 s while a run goes on (our binary cannot see torch's counters)."""

    def __init__(self):
        self.smi = shutil.which("nvidia-smi")
        self.samples, self.baseline, self.proc = [], None, None

    def query(self):
        q = subprocess.run([self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                           capture_output=True, text=True, timeout=10)
        return int(q.stdout.strip().splitlines()[0])

    def start(self):
        if not self.smi:
            return
        try:
            self.baseline = self.query()
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            self.smi = None
            return
        self.stop_flag = threading.Event()

        def loop():
            while not self.stop_flag.wait(0.5):
                try:
                    self.samples.append(self.query())
                except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                    pass

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self):
        if self.smi and self.baseline is not None:
            self.stop_flag.set()
            self.thread.join(timeout=15)

    def result(self):
        if not self.smi:
            return {"gpu_memory": "nvidia-smi unavailable: not measured"}
        return {"gpu_memory_used_baseline_mib": self.baseline,
                "gpu_memory_used_peak_mib": max(self.samples) if self.samples else None,
                "gpu_memory_samples": len(self.samples)}


PEAK_PY = r'''
import json, sys, time
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    dev = "@DEV@"
    if dev == "cuda":
        out["cuda_available"] = torch.cuda.is_available()
        out["device_name"] = torch.cuda.get_device_name(0)
        out["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    else:
        out["device_name"] = "cpu"
    n, reps = @N@, @REPS@
    for dtype, key in ((torch.bfloat16, "bf16_tflops"), (torch.float32, "fp32_tflops")):
        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        for _ in range(3):
            a @ b
        best = None
        for _ in range(reps):
            if dev == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(); a @ b; e.record(); torch.cuda.synchronize()
                t = s.elapsed_time(e) / 1e3
            else:
                t0 = time.perf_counter(); a @ b; t = time.perf_counter() - t0
            best = t if best is None else min(best, t)
        out[key] = 2 * n ** 3 / best / 1e12
    out["matmul_n"] = n
    out["method"] = "best of %d timed %d^3 matmuls after 3 warm-ups (random data), TF32 off" % (reps, n)
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
json.dump(out, open(sys.argv[1], "w"))
print(json.dumps(out))
sys.exit(1 if "error" in out else 0)
'''


def tail(path, n):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def gtest_counts(xml):
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return {"xml": "none"}
    cases = root.findall(".//testcase")
    return {"tests": len(cases), "failures": sum(1 for c in cases if c.find("failure") is not None),
            "skipped": sum(1 for c in cases if c.get("result") == "skipped")}


def read_metrics(path):
    m = {"step": [], "loss": [], "tokens_per_s": [], "val_loss": None}
    try:
        with open(path) as f:
            for line in f:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("kind") == "train":
                    m["step"].append(j.get("step"))
                    m["loss"].append(j.get("loss"))
                    m["tokens_per_s"].append(j.get("tokens_per_s"))
                elif j.get("kind") == "eval":
                    m["val_loss"] = j.get("val_loss")
    except OSError:
        pass
    return m


def compare(ref, run, precision):
    """Per-step losses of `run` against the CPU reference `ref` (steps both logged)."""
    a = dict(zip(ref["step"], ref["loss"]))
    pairs = [(s, a[s], l) for s, l in zip(run["step"], run["loss"]) if s in a and l is not None and a[s] is not None]
    if not pairs:
        return {"steps_compared": 0, "within_tolerance": False}
    diffs = [abs(l - r) for _, r, l in pairs]
    step1 = pairs[0]
    c = {"steps_compared": len(pairs), "step1": step1[0], "step1_cpu": step1[1], "step1_run": step1[2],
         "step1_rel_diff": abs(step1[2] - step1[1]) / abs(step1[1]), "max_abs_diff": max(diffs),
         "last_abs_diff": diffs[-1], "mean_abs_diff": sum(diffs) / len(diffs),
         "val_loss_cpu": ref["val_loss"], "val_loss_run": run["val_loss"]}
    if ref["val_loss"] is not None and run["val_loss"] is not None:
        c["val_abs_diff"] = abs(ref["val_loss"] - run["val_loss"])
    # Tolerances: same initial weights and batches, so step 1 agrees to fp32 rounding in FP32 (no autocast: the
    # CUDA forward computes in fp32 unless train.precision is BF16) and to bf16 rounding in BF16; later steps
    # drift with non-associative sums (and routing ties), more in bf16.
    first, late = (1e-4, 0.05) if precision == "FP32" else (1e-2, 0.10)
    c["tolerance"] = {"step1_rel": first, "last_abs_and_val_abs": late}
    c["within_tolerance"] = bool(c["step1_rel_diff"] < first and c["last_abs_diff"] < late and
                                 c.get("val_abs_diff", 0) < late and all(math.isfinite(d) for d in diffs))
    return c


def median(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description="HybridMoE GPU check (see check.sh)")
    ap.add_argument("out", nargs="?", default=os.environ.get("OUT") or os.path.join(os.getcwd(), "gpu_check_out"))
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--parts", default="")
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--bundle", default="")
    ap.add_argument("--script_dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--python", default=os.environ.get("PYTHON", "python3"))
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 1500.0 if args.cpu_dry_run else 470.0
    if not args.bundle:
        d = args.script_dir
        args.bundle = d if os.path.exists(os.path.join(d, "bin", "train")) else os.path.join(d, "..", "..", "gpu_bundle")
    args.bundle = os.path.abspath(args.bundle)
    if not os.path.exists(os.path.join(args.bundle, "bin", "train")):
        print(f"check.sh: {args.bundle} is not a bundle (no bin/train): run tools/gpu/bundle.sh, or pass --bundle=DIR",
              file=sys.stderr)
        return 2
    args.out = os.path.abspath(args.out)
    # Resolve the torch lib folder once: otherwise every bin/ wrapper would start python3 to find it.
    if not os.environ.get("HYBRIDMOE_TORCH_LIB"):
        q = subprocess.run([args.python, "-c", "import torch,os;print(os.path.join(os.path.dirname(torch.__file__),'lib'))"],
                           capture_output=True, text=True)
        if q.returncode == 0 and q.stdout.strip():
            os.environ["HYBRIDMOE_TORCH_LIB"] = q.stdout.strip().splitlines()[-1]
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
