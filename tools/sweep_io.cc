#include "tools/sweep_io.h"

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace hybridmoe {
namespace {

volatile sig_atomic_t g_child = 0;

void ForwardSignal(int sig) {
  if (g_child > 0) kill(g_child, SIGTERM);
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void InstallSignalForwarding() {
  signal(SIGINT, ForwardSignal);
  signal(SIGTERM, ForwardSignal);
}

// Whether run_dir holds a complete checkpoint (MANIFEST.json written last) of step >= steps.
bool HasFinalCheckpoint(const std::string& run_dir, int64_t steps) {
  DIR* d = opendir((run_dir + "/checkpoints").c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    int64_t step = 0;
    if (name.rfind("step_", 0) == 0 && absl::SimpleAtoi(name.substr(5), &step) && step >= steps &&
        Exists(run_dir + "/checkpoints/" + name + "/MANIFEST.json")) {
      found = true;
    }
  }
  closedir(d);
  return found;
}

// Runs argv with extra environment, stdout and stderr appended to log_path; returns the exit code
// (128 + signal when killed). The child dies with this process (PR_SET_PDEATHSIG).
absl::StatusOr<int> RunChild(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                             const std::string& log_path) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed: ", strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::FILE* log = std::fopen(log_path.c_str(), "a");
    if (log == nullptr) _exit(127);
    dup2(fileno(log), 1);
    dup2(fileno(log), 2);
    for (const std::string& kv : env) putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "compare_norms: cannot execute %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  g_child = pid;
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  g_child = 0;
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

// The last line of `text` that contains `needle` (or the last non-empty line when needle is empty).
std::string LastLine(const std::string& text, const std::string& needle) {
  std::string found;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    if (needle.empty() || line.find(needle) != absl::string_view::npos) found = std::string(line);
  }
  return found;
}

std::string SelfDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  const std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.find_last_of('/'));
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace hybridmoe
