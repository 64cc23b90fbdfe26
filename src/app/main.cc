// skyring: a durable timer service. `skyring run` starts a node (see README.md).
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "app/config.h"
#include "app/node.h"
#include "base/log.h"
#include "base/version.h"

extern char** environ;

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "Usage: skyring <command> [options]\n\n"
               "Commands:\n"
               "  run        start a node (skyring run --help for its options)\n"
               "  version    print the version\n");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace skyring;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    usage(stderr);
    return 2;
  }
  if (args[0] == "version" || args[0] == "--version") {
    std::printf("skyring %s\n", kVersion);
    return 0;
  }
  if (args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    usage(stdout);
    return 0;
  }
  if (args[0] != "run") {
    std::fprintf(stderr, "skyring: error: unknown command '%s' (try: skyring run)\n",
                 args[0].c_str());
    return 2;
  }
  args.erase(args.begin());
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(config_help().c_str(), stdout);
      return 0;
    }
  }
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq != nullptr && std::strncmp(*e, "SKYRING_", 8) == 0)
      env.emplace(std::string(*e, static_cast<size_t>(eq - *e)), eq + 1);
  }
  auto config = load_config(args, env);
  if (!config) {
    std::fprintf(stderr, "skyring: error: %s\n", config.error().message.c_str());
    return 2;
  }
  auto level = log::parse_level(config->log_level);
  log::init(level ? *level : log::Level::kInfo, config->log_format == "json");
  return run_node(*config);
}
