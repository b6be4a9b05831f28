// Status helpers. Debian's abseil (20220623) predates ABSL_RETURN_IF_ERROR, so the two usual macros are
// defined here. Boundaries (config, files, checkpoints, process setup) return absl::Status / StatusOr;
// only a tool's main() turns a Status into a message and an exit code.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HM_CONCAT_INNER_(a, b) a##b
#define HM_CONCAT_(a, b) HM_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status hm_status_ = (expr);      \
    if (!hm_status_.ok()) return hm_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) ASSIGN_OR_RETURN_IMPL_(HM_CONCAT_(hm_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                           \
  if (!statusor.ok()) return statusor.status();     \
  lhs = std::move(statusor).value()
