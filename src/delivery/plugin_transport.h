// Transport plugins (docs/plugins.md): a shared library loaded with `--transport <path>` that
// implements the C ABI of include/skyring/transport_plugin.h, wrapped as a Transport.
//
// Operation
// * load_transport_plugin() dlopens the library (RTLD_NOW | RTLD_LOCAL), looks up
//   SKYRING_TRANSPORT_ENTRY, checks the ABI version, the name and the function table, and calls
//   the plugin's create() with the TOML text of its [transports.<name>] table. Every failure is
//   one line starting with "--transport <path>: ".
// * deliver() turns the DeliveryJob into a skyring_transport_job (pointers into the job, valid
//   for the call) and passes a completion function plus a token as its context. The token, not
//   a pointer, names the job in a table of open jobs: a completion for a token that is not
//   there (a second call, one after stop(), one after the host gave up) is ignored, so a
//   misbehaving plugin cannot complete a job twice or touch freed memory through us.
// * Safety nets: at most `max_pending` open jobs (beyond: kRetryable "queue full" at once); a
//   job whose completion does not come within its timeout_ms + `completion_grace_ms` is
//   completed kRetryable by a watchdog thread; method and uri with NUL bytes never reach the
//   plugin. The library is never dlclosed once create() ran (a stray thread of the plugin
//   must not run unmapped code).
//
// Concurrency
// * validate(), destination(), deliver() are safe from any thread (the plugin promises the
//   same for its functions). `done` runs on whatever thread the plugin completes on (or the
//   watchdog's, or the caller's for a refused job, or stop()'s), exactly once, with no lock of
//   ours held; it may call deliver() again. A plugin may complete inside its deliver().
// * stop() is idempotent: it refuses new jobs, calls the plugin's stop(timeout), waits until
//   every open job completed or `stop_timeout_ms` passed, completes the rest with kAborted and
//   joins the watchdog. After it returns no `done` runs. It must not be called from inside a
//   `done` (the plugin may be joining the thread it runs on).
//
// Limitations
// * A plugin runs inside the node: a crash or a blocking call in validate()/deliver() is the
//   node's crash or stall; only the completion side is guarded. Exceptions from C++ plugins must
//   not leave the ABI functions (undefined behaviour, documented in the header).
// * 64-bit platforms only (the token packs a host id and a sequence number into a pointer).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "delivery/transport.h"

namespace skyring {

struct PluginTransportOptions {
  size_t max_pending = 100000;         // open jobs at most; beyond: kRetryable "queue full"
  int64_t stop_timeout_ms = 3000;      // stop(): the plugin's time to end its jobs
  int64_t completion_grace_ms = 5000;  // added to job.timeout_ms before the host gives up
};

// config_for(name): the TOML text of the config file's [transports.<name>] table ("" when none).
using PluginConfigLookup = std::function<std::string(std::string_view name)>;

// Loads and creates the plugin at `path`. Errors are one line: "--transport <path>: ...".
Result<std::unique_ptr<Transport>> load_transport_plugin(const std::string& path,
                                                         const PluginConfigLookup& config_for,
                                                         PluginTransportOptions options = {});

}  // namespace skyring
