// Reading metrics.jsonl (tools/compare_metrics.h): the JSON of one line, whole files with a torn last line,
// and the data-order check that compares strings across runs.
#include "tools/compare_metrics.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace hybridmoe {
namespace {

std::string TempPath(const std::string& name) { return std::string(std::getenv("TEST_TMPDIR")) + "/" + name; }

TEST(CompareMetricsTest, ParsesNumbersBooleansNullAndStrings) {
  auto r = ParseFlatJsonObject(
      R"({"kind": "train", "step": 12, "loss": 2.5e-1, "tokens": 1234567890123, "ok": true, "bad": false,
          "grad_norm": null, "note": "a \"quoted\" \\ back\/slash\n"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Step(), 12);
  EXPECT_EQ(r->Get("loss"), 0.25);
  EXPECT_EQ(r->Get("tokens"), 1234567890123.0);
  EXPECT_EQ(r->Get("ok"), 1);
  EXPECT_EQ(r->Get("bad"), 0);
  EXPECT_TRUE(std::isnan(r->Get("grad_norm")));
  EXPECT_TRUE(std::isnan(r->Get("absent")));
  EXPECT_EQ(r->str.at("kind"), "train");
  EXPECT_EQ(r->str.at("note"), "a \"quoted\" \\ back/slash\n");
}

// \u escapes decode to UTF-8, in keys and values, surrogate pairs included (Python's json.dumps writes every
// non-ASCII character this way); raw UTF-8 passes through unchanged.
TEST(CompareMetricsTest, UnicodeEscapesDecodeToUtf8) {
  auto r = ParseFlatJsonObject(R"({"run": "caf\u00e9", "emoji": "\ud83d\ude00", "raw": "café", "\u00fcber": 3})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str.at("run"), "caf\xc3\xa9");
  EXPECT_EQ(r->str.at("emoji"), "\xf0\x9f\x98\x80");
  EXPECT_EQ(r->str.at("raw"), "caf\xc3\xa9");
  EXPECT_EQ(r->Get("\xc3\xbc"
                   "ber"),
            3);
}

TEST(CompareMetricsTest, MalformedLinesAreErrors) {
  for (const char* bad : {R"({"step": 1, "loss": 2.)", "", "[1, 2]", R"({"step": 1} trailing)",
                          R"({"step": 1, "v": [1]})", R"({"step": 1, "v": {"a": 1}})", R"({"s": "\u12"})"}) {
    EXPECT_FALSE(ParseFlatJsonObject(bad).ok()) << bad;
  }
  auto cut = ParseFlatJsonObject(R"({"step": 1, "loss": )");
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(std::string(cut.status().message()).find("at byte"), std::string::npos) << cut.status();
}

TEST(CompareMetricsTest, ReadRunMetricsGroupsByKindAndCountsTornLines) {
  const std::string path = TempPath("metrics.jsonl");
  std::ofstream(path) << R"({"kind": "train", "step": 1, "loss": 3.0, "data_hash": "\u00e9"})"
                      << "\n"
                      << R"({"kind": "eval", "step": 1, "val_loss": 3.5})"
                      << "\n\n"
                      << R"({"kind": "skip", "step": 2})"
                      << "\n"
                      << R"({"kind": "train", "step": 3, "lo)";
  auto run = ReadRunMetrics(path);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->train.size(), 1u);
  EXPECT_EQ(run->train[0].str.at("data_hash"), "\xc3\xa9");
  EXPECT_EQ(run->eval.size(), 1u);
  EXPECT_EQ(run->skip.size(), 1u);
  EXPECT_EQ(run->unreadable_lines, 1);
  EXPECT_EQ(ReadRunMetrics(TempPath("absent.jsonl")).status().code(), absl::StatusCode::kNotFound);
}

// Two runs whose data_hash differs only above 7 bits (U+00E9 and U+0169 share their low 7 bits) saw
// different data.
TEST(CompareMetricsTest, DataOrderComparesFullCharacters) {
  RunMetrics a, b;
  auto ra = ParseFlatJsonObject(R"({"kind": "train", "step": 1, "data_hash": "\u00e9"})");
  auto rb = ParseFlatJsonObject(R"({"kind": "train", "step": 1, "data_hash": "\u0169"})");
  ASSERT_TRUE(ra.ok() && rb.ok());
  a.train.push_back(*ra);
  b.train.push_back(*rb);
  const DataOrderCheck check = CompareDataOrder({"A", "B"}, {&a, &b});
  EXPECT_FALSE(check.identical) << check.detail;
  EXPECT_EQ(check.steps_compared, 1);
  EXPECT_EQ(CompareDataOrder({"A", "A2"}, {&a, &a}).identical, true);
}

}  // namespace
}  // namespace hybridmoe
