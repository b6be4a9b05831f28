// Minimal command-line parsing shared by the tools: --name=value, --name value, bare --flag for
// booleans, repeatable flags (e.g. --override), and positional arguments. Unknown flags are an error
// that lists the valid ones. (absl's vector flags split on ',', which text-format overrides may contain.)
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hybridmoe {

struct FlagSpec {
  std::string name;
  std::string help;
  bool is_bool = false;
  bool repeated = false;
};

class CommandLine {
 public:
  static absl::StatusOr<CommandLine> Parse(int argc, char** argv, const std::vector<FlagSpec>& specs);
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  std::vector<std::string> GetAll(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }
  static std::string Usage(const std::string& program, const std::string& summary, const std::vector<FlagSpec>& specs);
  // The common front of every tool's main(): parses, answers --help (usage on stdout, *exit_code 0) and bad
  // flags ("PROGRAM: message" on stderr, *exit_code 2). Returns nullopt when main() should return *exit_code.
  // `specs` gets a --help flag appended.
  static std::optional<CommandLine> ParseOrExit(int argc, char** argv, const std::string& program,
                                                const std::string& summary, std::vector<FlagSpec> specs,
                                                int* exit_code);

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

}  // namespace hybridmoe
