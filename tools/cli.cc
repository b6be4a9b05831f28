#include "tools/cli.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hybridmoe {

absl::StatusOr<CommandLine> CommandLine::Parse(int argc, char** argv, const std::vector<FlagSpec>& specs) {
  CommandLine cl;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      cl.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& s : specs) {
      if (s.name == name) spec = &s;
    }
    if (spec == nullptr) {
      std::vector<std::string> names;
      for (const FlagSpec& s : specs) names.push_back("--" + s.name);
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, "; valid flags: ", absl::StrJoin(names, ", ")));
    }
    if (!has_value) {
      if (spec->is_bool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    if (!spec->repeated && cl.values_.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given more than once"));
    }
    cl.values_[name].push_back(value);
  }
  return cl;
}

std::string CommandLine::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> CommandLine::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

bool CommandLine::GetBool(const std::string& name) const {
  const std::string v = Get(name, "false");
  return v == "true" || v == "1" || v == "yes";
}

absl::StatusOr<int64_t> CommandLine::GetInt(const std::string& name, int64_t fallback) const {
  if (!Has(name)) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", name, " (", Get(name), ") must be an integer"));
  }
  return v;
}

std::string CommandLine::Usage(const std::string& program, const std::string& summary,
                               const std::vector<FlagSpec>& specs) {
  std::string out = absl::StrCat("usage: ", program, " [flags]\n", summary, "\n");
  for (const FlagSpec& s : specs) absl::StrAppend(&out, "  --", s.name, s.is_bool ? "" : "=...", "  ", s.help, "\n");
  return out;
}

std::optional<CommandLine> CommandLine::ParseOrExit(int argc, char** argv, const std::string& program,
                                                    const std::string& summary, std::vector<FlagSpec> specs,
                                                    int* exit_code) {
  bool has_help = false;
  for (const FlagSpec& s : specs) has_help |= s.name == "help";
  if (!has_help) specs.push_back({"help", "show this help", true});
  auto cl = Parse(argc, argv, specs);
  if (!cl.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), std::string(cl.status().message()).c_str());
    *exit_code = 2;
    return std::nullopt;
  }
  if (cl->GetBool("help")) {
    std::fputs(Usage(program, summary, specs).c_str(), stdout);
    *exit_code = 0;
    return std::nullopt;
  }
  return *std::move(cl);
}

}  // namespace hybridmoe
