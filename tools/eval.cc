// bazel-bin/tools/eval --checkpoint=DIR --data=TOKENS [--dtype=uint16|uint32] [--seq_len=N] [--batch_size=N]
//                      [--max_batches=N] [--dump_logits=FILE.safetensors] [--threads=N] [--device=cpu|cuda]
//                      [--precision=fp32|bf16]
// Evaluates a model directory (config.textproto + model.safetensors, see models/weights.h) on a raw
// little-endian token file: mean token cross-entropy and perplexity over contiguous windows (window w
// predicts tokens w*S+1 .. w*S+S from tokens w*S .. w*S+S-1, so every token but the first is scored once).
// Prints one human line and one JSON object on stdout. --dump_logits writes the first batch's input_ids
// and targets [B,S], logits [B,S,V] and each MoE block's router logits (router_logits.<layer>, [B*S,E]).
// Defaults: dtype, seq_len and batch size from the directory's config (data.dtype, data.seq_len,
// data.micro_batch_size); every window when --max_batches is absent; device and precision from the config's
// parallel.device and train.precision (bf16 as in training: core/precision.h; the loss in fp32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/data.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "models/weights.h"
#include "parallel/device.h"
#include "tools/cli.h"

namespace hybridmoe {
namespace {

struct EvalOptions {
  std::string checkpoint, data, dump_logits;
  std::string dtype;                                      // "" = the config's
  std::string device, precision;                          // "" = the config's
  int64_t seq_len = 0, batch_size = 0, max_batches = -1;  // 0 / -1 = the config's / all
};

absl::Status Evaluate(const EvalOptions& o) {
  TrainConfig config;
  ASSIGN_OR_RETURN(Transformer model, LoadModelDir(o.checkpoint, &config));
  model->eval();
  if (o.device == "cpu") {
    config.mutable_parallel()->set_device(ParallelConfig::CPU);
  } else if (o.device == "cuda") {
    config.mutable_parallel()->set_device(ParallelConfig::CUDA);
  } else if (!o.device.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--device (", o.device, ") must be cpu or cuda"));
  }
  if (o.precision == "fp32") {
    config.mutable_train()->set_precision(TrainRunConfig::FP32);
  } else if (o.precision == "bf16") {
    config.mutable_train()->set_precision(TrainRunConfig::BF16);
  } else if (!o.precision.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--precision (", o.precision, ") must be fp32 or bf16"));
  }
  const int gpus = at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0;
  ASSIGN_OR_RETURN(const at::Device device, ChooseDevice(config.parallel().device(), 0, 1, gpus));
  SelectDevice(device);
  model->to(device);
  model->set_compute_dtype(ComputeDtype(config, device, /*report=*/true));
  DataConfig::Dtype dtype = config.data().dtype();
  if (o.dtype == "uint16") {
    dtype = DataConfig::UINT16;
  } else if (o.dtype == "uint32") {
    dtype = DataConfig::UINT32;
  } else if (!o.dtype.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--dtype (", o.dtype, ") must be uint16 or uint32"));
  }
  const int64_t S = o.seq_len > 0 ? o.seq_len : config.data().seq_len();
  const int64_t B = o.batch_size > 0 ? o.batch_size : config.data().micro_batch_size();
  const int64_t V = config.model().vocab_size();
  if (S > config.model().max_seq_len()) {
    return absl::InvalidArgumentError(absl::StrCat("--seq_len (", S, ") exceeds model.max_seq_len (",
                                                   config.model().max_seq_len(), ") of ", o.checkpoint));
  }
  ASSIGN_OR_RETURN(auto tokens, TokenFile::Open(o.data, DataConfig::RAW, dtype, V));
  const int64_t windows = (tokens->num_tokens() - 1) / S;
  if (windows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.data, ": ", tokens->num_tokens(), " tokens; one window of --seq_len (", S, ") needs ", S + 1));
  }
  int64_t batches = (windows + B - 1) / B;
  if (o.max_batches >= 0) batches = std::min(batches, o.max_batches);

  at::NoGradGuard no_grad;
  const std::vector<MoeLayer> moe_layers = model->moe_layers();
  for (MoeLayer layer : moe_layers) layer->collect_stats = false;
  double loss_sum = 0;
  int64_t scored = 0, windows_used = 0;
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t first = b * B, count = std::min(B, windows - first);
    at::Tensor buf = at::empty({count, S + 1}, at::kLong);
    for (int64_t i = 0; i < count; ++i) {
      RETURN_IF_ERROR(tokens->Read((first + i) * S, S + 1, buf[i].data_ptr<int64_t>()));
    }
    const at::Tensor inputs = buf.narrow(1, 0, S).contiguous().to(device),
                     targets = buf.narrow(1, 1, S).contiguous().to(device);
    const bool dump = b == 0 && !o.dump_logits.empty();
    for (MoeLayer layer : moe_layers) layer->keep_router_logits = dump;
    const at::Tensor logits = model->forward(inputs).logits;
    loss_sum +=
        at::cross_entropy_loss(logits.reshape({-1, V}).to(at::kFloat), targets.reshape({-1}), {}, at::Reduction::Sum)
            .item<double>();
    scored += count * S;
    windows_used += count;
    if (dump) {
      std::map<std::string, at::Tensor> out = {
          {"input_ids", inputs.cpu()}, {"targets", targets.cpu()}, {"logits", logits.cpu()}};
      for (size_t i = 0; i < model->blocks.size(); ++i) {
        const MoeLayer& layer = model->blocks[i]->moe;
        if (!layer.is_empty()) out[absl::StrCat("router_logits.", i)] = layer->last_router_logits.cpu();
      }
      RETURN_IF_ERROR(WriteSafetensors(o.dump_logits, out, {{"checkpoint", o.checkpoint}, {"data", o.data}}));
    }
  }
  const double loss = loss_sum / static_cast<double>(scored);
  std::printf("eval: %s on %s: %lld tokens in %lld windows of %lld, loss %.6f, perplexity %.4f\n", o.checkpoint.c_str(),
              o.data.c_str(), static_cast<long long>(scored), static_cast<long long>(windows_used),
              static_cast<long long>(S), loss, std::exp(loss));
  const nlohmann::json j = {{"checkpoint", o.checkpoint},
                            {"data", o.data},
                            {"tokens", scored},
                            {"windows", windows_used},
                            {"batches", batches},
                            {"seq_len", S},
                            {"batch_size", B},
                            {"loss", loss},
                            {"perplexity", std::exp(loss)},
                            {"device", device.str()},
                            {"precision", model->compute_dtype() == at::kBFloat16 ? "bf16" : "fp32"}};
  std::printf("%s\n", j.dump().c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const std::vector<FlagSpec> specs = {
      {"checkpoint", "model directory: config.textproto + model.safetensors (required)"},
      {"data", "raw little-endian token file (required)"},
      {"dtype", "token width: uint16 or uint32 (default: the config's data.dtype)"},
      {"seq_len", "window length (default: the config's data.seq_len)"},
      {"batch_size", "windows per forward (default: the config's data.micro_batch_size)"},
      {"max_batches", "stop after this many batches (default: all windows)"},
      {"dump_logits", "write the first batch's inputs, logits and router logits to this .safetensors file"},
      {"threads", "intra-op threads (default: all cores)"},
      {"device", "cpu or cuda (default: the config's parallel.device)"},
      {"precision", "fp32 or bf16 (default: the config's train.precision)"},
      {"help", "show this help", true},
  };
  int exit_code = 0;
  auto cl =
      CommandLine::ParseOrExit(argc, argv, "eval", "Evaluates a model directory on a token file.", specs, &exit_code);
  if (!cl) return exit_code;
  if (!cl->Has("checkpoint") || !cl->Has("data")) {
    std::fprintf(stderr, "eval: --checkpoint=DIR and --data=TOKENS are required\n");
    return 2;
  }
  EvalOptions o;
  o.checkpoint = cl->Get("checkpoint");
  o.data = cl->Get("data");
  o.dtype = cl->Get("dtype");
  o.dump_logits = cl->Get("dump_logits");
  o.device = cl->Get("device");
  o.precision = cl->Get("precision");
  absl::Status status;
  // Flags left out keep the value already in *out.
  auto get = [&](const char* name, int64_t min, int64_t* out) {
    if (!cl->Has(name)) return;
    auto v = cl->GetInt(name, 0);
    if (!v.ok()) {
      status.Update(v.status());
    } else if (*v < min) {
      status.Update(absl::InvalidArgumentError(absl::StrCat("--", name, " (", *v, ") must be >= ", min)));
    } else {
      *out = *v;
    }
  };
  int64_t threads = std::max(1u, std::thread::hardware_concurrency());
  get("seq_len", 1, &o.seq_len);
  get("batch_size", 1, &o.batch_size);
  get("max_batches", 0, &o.max_batches);
  get("threads", 1, &threads);
  if (status.ok()) {
    at::set_num_threads(static_cast<int>(threads));
    status = Evaluate(o);
  }
  if (!status.ok()) {
    std::fprintf(stderr, "eval: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
