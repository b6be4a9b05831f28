#include "tools/bench_common.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <sstream>

#include <ATen/core/grad_mode.h>

#include "core/data.h"
#include "models/accounting.h"

namespace hybridmoe {

double SecondsSince(BenchClock::time_point since) {
  return std::chrono::duration<double>(BenchClock::now() - since).count();
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  s.n = static_cast<int>(values.size());
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  s.median = n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
  s.min = values.front();
  s.max = values.back();
  return s;
}

double MeasureMatmulPeak(const std::vector<int64_t>& sizes, int reps, at::ScalarType dtype) {
  at::NoGradGuard no_grad;
  double best = 0;
  for (const int64_t n : sizes) {
    const at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
    at::Tensor c = at::empty({n, n}, a.options());
    at::mm_out(c, a, b);
    for (int r = 0; r < reps; ++r) {
      const auto t0 = BenchClock::now();
      at::mm_out(c, a, b);
      best = std::max(best, 2.0 * n * n * n / SecondsSince(t0));
    }
  }
  return best;
}

FlopCount CountFlops(const TrainConfig& config) {
  const ModelAccount a = AccountModel(config, 1);
  const ModelConfig& m = config.model();
  const double full_attention = 4.0 * m.n_layers() * config.data().seq_len() * m.d_model();
  const double causal_attention = full_attention * (config.data().seq_len() + 1) / (2.0 * config.data().seq_len());
  FlopCount f;
  f.per_token_train = static_cast<double>(a.flops_per_token_train);
  f.per_token_train_causal = f.per_token_train - 3.0 * (full_attention - causal_attention);
  return f;
}

int64_t PeakResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      int64_t kb = 0;
      fields >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

absl::StatusOr<Batch> BenchBatch(const TrainConfig& config, int64_t batch, int64_t first, bool random_tokens) {
  const int64_t S = config.data().seq_len(), V = config.model().vocab_size();
  if (random_tokens) {
    at::Generator gen = at::detail::createCPUGenerator(config.train().seed() + 7919 * static_cast<uint64_t>(first));
    const at::Tensor ids = at::randint(V, {batch, S + 1}, gen, at::kLong);
    return Batch{ids.narrow(1, 0, S).contiguous(), ids.narrow(1, 1, S).contiguous()};
  }
  auto loader = DataLoader::Create(config.data(), V, config.train().seed());
  if (!loader.ok()) return loader.status();
  return (*loader)->TrainBatch(/*step=*/0, first + batch, first, batch);
}

}  // namespace hybridmoe
