#include "tools/bench_hf.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/host.h"
#include "core/status.h"
#include "models/weights.h"

namespace hybridmoe {
namespace {

std::string ExePath() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : "";
}

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// In a forked child: replaces the process with argv[0] (a path), or says why not and exits 127.
[[noreturn]] void ExecOrDie(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execv(args[0], args.data());
  std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
  _exit(127);
}

// Runs argv to completion; its output goes to our stderr.
absl::Status RunTool(const std::vector<std::string>& argv) {
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed: ", std::strerror(errno)));
  if (pid == 0) {
    dup2(STDERR_FILENO, STDOUT_FILENO);
    ExecOrDie(argv);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), " failed (status ", status, ")"));
  }
  return absl::OkStatus();
}

absl::Status WriteInt64(const std::string& path, const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), c.numel() * 8);
  return out ? absl::OkStatus() : absl::InternalError(absl::StrCat("cannot write ", path));
}

}  // namespace

HfPaths DefaultHfPaths() {
  HfPaths p;
  const std::string exe = ExePath(), dir = DirName(exe);
  p.convert_hf = dir + "/convert_hf";
  p.script = exe + ".runfiles/hybridmoe/tools/hf_bench.py";
  if (!Exists(p.script)) p.script = "tools/hf_bench.py";  // run from the repository root
  const char* venv = std::getenv("HYBRIDMOE_VENV");
  p.python = std::string(venv != nullptr ? venv : "/root/.cache/hybridmoe/venv") + "/bin/python";
  p.work_dir = "/tmp/hybridmoe_bench_" + std::to_string(getpid());
  return p;
}

absl::StatusOr<std::unique_ptr<HfSide>> HfSide::Start(const HfPaths& paths, Transformer& model,
                                                      const TrainConfig& config, const at::Tensor& inputs,
                                                      const at::Tensor& targets, int threads, bool autocast) {
  for (const std::string& f : {paths.python, paths.script, paths.convert_hf}) {
    if (!Exists(f))
      return absl::NotFoundError(
          absl::StrCat("HF side: ", f, " not found (see --hf_python, --hf_script, --convert_hf)"));
  }
  RETURN_IF_ERROR(MakeDirs(paths.work_dir));
  const std::string ours = paths.work_dir + "/ours", hf = paths.work_dir + "/hf";
  RETURN_IF_ERROR(SaveModelDir(model, config, ours));
  RETURN_IF_ERROR(RunTool({paths.convert_hf, "--to_hf=" + hf, "--from=" + ours, "--overwrite"}));
  RETURN_IF_ERROR(WriteInt64(paths.work_dir + "/inputs.bin", inputs));
  RETURN_IF_ERROR(WriteInt64(paths.work_dir + "/targets.bin", targets));

  int down[2], up[2];
  if (pipe(down) != 0 || pipe(up) != 0) return absl::InternalError("pipe failed");
  const OptimConfig& o = config.optim();
  std::vector<std::string> argv = {paths.python,
                                   paths.script,
                                   "--serve",
                                   "--hf_dir=" + hf,
                                   "--inputs=" + paths.work_dir + "/inputs.bin",
                                   "--targets=" + paths.work_dir + "/targets.bin",
                                   absl::StrCat("--batch=", inputs.size(0)),
                                   absl::StrCat("--seq=", inputs.size(1)),
                                   absl::StrCat("--threads=", threads),
                                   absl::StrCat("--lr=", o.lr()),
                                   absl::StrCat("--beta1=", o.beta1()),
                                   absl::StrCat("--beta2=", o.beta2()),
                                   absl::StrCat("--eps=", o.eps()),
                                   absl::StrCat("--weight_decay=", o.weight_decay()),
                                   absl::StrCat("--grad_clip=", o.grad_clip())};
  if (autocast) argv.push_back("--autocast");
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed: ", std::strerror(errno)));
  if (pid == 0) {
    dup2(down[0], STDIN_FILENO);
    dup2(up[1], STDOUT_FILENO);
    close(down[0]);
    close(down[1]);
    close(up[0]);
    close(up[1]);
    setenv("HF_HUB_OFFLINE", "1", 1);
    setenv("TRANSFORMERS_OFFLINE", "1", 1);
    setenv("HF_HOME", (paths.work_dir + "/hf_home").c_str(), 1);
    setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
    // The allocator policy this process runs with (core/host.h), so that both sides get the same one.
    const char* release = std::getenv("HYBRIDMOE_MALLOC_RELEASE");
    if (release == nullptr || std::strcmp(release, "1") != 0) setenv("GLIBC_TUNABLES", KeepFreedMemoryTunables(), 1);
    ExecOrDie(argv);
  }
  close(down[0]);
  close(up[1]);
  std::unique_ptr<HfSide> side(new HfSide());
  side->pid_ = pid;
  side->to_child_ = down[1];
  side->from_child_ = up[0];
  ASSIGN_OR_RETURN(std::string line, side->ReadLine());
  if (line.rfind("ready ", 0) != 0)
    return absl::InternalError(absl::StrCat("hf_bench.py: unexpected first line: ", line));
  side->ready_ = line.substr(6);
  return side;
}

HfSide::~HfSide() {
  if (to_child_ >= 0) {
    const char quit[] = "quit\n";
    (void)!write(to_child_, quit, sizeof(quit) - 1);
    close(to_child_);
  }
  if (from_child_ >= 0) close(from_child_);
  if (pid_ > 0) {
    int status = 0;
    waitpid(pid_, &status, 0);
  }
}

absl::StatusOr<std::string> HfSide::ReadLine() {
  for (;;) {
    const size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    char chunk[4096];
    const ssize_t n = read(from_child_, chunk, sizeof(chunk));
    if (n <= 0) return absl::InternalError("hf_bench.py exited early (its error is on stderr above)");
    buffer_.append(chunk, n);
  }
}

absl::StatusOr<HfSteps> HfSide::Steps(int n) {
  const std::string cmd = absl::StrCat("step ", n, "\n");
  if (write(to_child_, cmd.data(), cmd.size()) != static_cast<ssize_t>(cmd.size())) {
    return absl::InternalError("cannot write to hf_bench.py");
  }
  ASSIGN_OR_RETURN(const std::string line, ReadLine());
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("seconds"))
    return absl::InternalError(absl::StrCat("hf_bench.py: bad reply: ", line));
  HfSteps s;
  for (const auto& v : j["seconds"]) s.seconds.push_back(v.get<double>());
  for (const auto& v : j["lm_loss"]) s.lm_loss.push_back(v.get<double>());
  return s;
}

}  // namespace hybridmoe
