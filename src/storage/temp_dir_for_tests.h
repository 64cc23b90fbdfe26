// Test support: a fresh directory under /tmp, removed with everything in it when the object
// goes. Used by the storage tests (RocksDB over a real directory, power cuts included).
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

namespace skyring::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "skyring-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = p ? p : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace skyring::testing
