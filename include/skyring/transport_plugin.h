/* Skyring transport plugin ABI (docs/plugins.md).
 *
 * A transport plugin is a shared library that `skyring run --transport <path>` loads at start.
 * It adds one transport, named by the plugin, that timers select with
 * {"callback": {"transport": "<name>", "method": ..., "uri": ...}}. The plugin includes only
 * this header: it never links against Skyring.
 *
 * The contract, in short
 * ----------------------
 * 1. The library exports one C function, SKYRING_TRANSPORT_ENTRY:
 *
 *      SKYRING_PLUGIN_EXPORT const struct skyring_transport_plugin*
 *      skyring_transport_plugin_entry(void);
 *
 *    It returns a pointer to a static descriptor that stays valid while the library is loaded.
 *    The node checks, in this order: the symbol exists; abi_version ==
 *    SKYRING_TRANSPORT_ABI_VERSION; name matches [a-z][a-z0-9_-]{0,31}; create, validate,
 *    deliver, stop and destroy are not NULL (destination may be NULL). Any failure stops the
 *    node at start with a one-line message.
 * 2. create() is called once with the TOML text of the [transports.<name>] table of the node's
 *    --config file ("" when there is none). It returns 0 and an opaque state, or -1 and a
 *    message in errbuf (the node exits with it).
 * 3. validate() and destination() are called on the request path and the engine thread, from
 *    several threads at once: cheap, non-blocking, thread-safe, no side effects.
 * 4. deliver() hands over one delivery attempt. It must not block. For every job it accepted
 *    (returned 0) the plugin calls `done(done_ctx, outcome, status, detail)` exactly once, from
 *    any thread, possibly before deliver() returns. When deliver() returns -1 the job was
 *    refused and the plugin must not call `done` for it (the node reports it retryable).
 *    The job and every string in it are only valid during the deliver() call: copy what you
 *    keep.
 * 5. stop() is called once, when the node shuts down: finish or give up every job within
 *    timeout_ms (report jobs never attempted with SKYRING_OUTCOME_ABORTED), stop the threads,
 *    and return. destroy() follows once and frees the state. No call of any kind is made
 *    concurrently with or after destroy().
 *
 * The node protects itself: a second `done` for a job, a `done` after stop() returned, or a
 * `done` for a job the node already gave up on is ignored; jobs still open when the stop
 * timeout ends are completed as aborted by the node; a job whose `done` does not come within
 * its timeout_ms (plus a grace period) is reported retryable by the node. The library is never
 * unloaded (dlclose) once create() was called, so a stray plugin thread cannot run unmapped
 * code.
 *
 * Rules for plugin code: no C++ exception may leave any function of this ABI; every string
 * passed in either direction is UTF-8 (bytes as received) and NUL-terminated; `detail` and
 * log messages are copied by the node before the call returns.
 */
#ifndef SKYRING_TRANSPORT_PLUGIN_H
#define SKYRING_TRANSPORT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of the structures or functions below. */
#define SKYRING_TRANSPORT_ABI_VERSION 1

/* The one symbol the node looks up (dlsym). */
#define SKYRING_TRANSPORT_ENTRY "skyring_transport_plugin_entry"

#if defined(__GNUC__) || defined(__clang__)
#define SKYRING_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define SKYRING_PLUGIN_EXPORT
#endif

/* Outcome of one delivery attempt (the `outcome` argument of the completion). The node
 * retries RETRYABLE with the timer's backoff until its attempts are used up, fails the timer
 * on PERMANENT, and treats ABORTED as "not attempted": the attempt is not counted and the
 * timer stays owed (use it for jobs given up in stop()). ABORTED before stop() was called counts
 * as RETRYABLE (else the node would try again at once, without end). Any other value counts as
 * RETRYABLE. */
#define SKYRING_OUTCOME_SUCCESS 0
#define SKYRING_OUTCOME_RETRYABLE 1
#define SKYRING_OUTCOME_PERMANENT 2
#define SKYRING_OUTCOME_ABORTED 3

/* What the timer's `data` is (job.data_kind). */
#define SKYRING_DATA_NONE 0   /* no data: data == "" and data_len == 0 */
#define SKYRING_DATA_STRING 1 /* a JSON string: its text, unquoted and unescaped */
#define SKYRING_DATA_JSON 2   /* a JSON object: its serialized text */

/* Log levels of skyring_transport_host.log. */
#define SKYRING_LOG_DEBUG 1
#define SKYRING_LOG_INFO 2
#define SKYRING_LOG_WARN 3
#define SKYRING_LOG_ERROR 4

/* One callback header of the timer, as given by the client (name case preserved). */
struct skyring_header {
  const char* name;
  size_t name_len;
  const char* value;
  size_t value_len;
};

/* One delivery attempt. Valid only during deliver(). Every string is NUL-terminated; the
 * lengths are given as well (data may contain NUL bytes; method and uri never do). */
struct skyring_transport_job {
  const char* timer_id;
  size_t timer_id_len;
  uint32_t attempt;   /* 1-based number of this attempt */
  const char* method; /* lower case, as validated by validate() */
  const char* uri;    /* as validated by validate() */
  size_t uri_len;
  int data_kind; /* SKYRING_DATA_* */
  const char* data;
  size_t data_len;
  int64_t timeout_ms; /* the attempt should end within this time (--delivery-timeout) */
  const struct skyring_header* headers;
  size_t header_count;
};

/* Called exactly once per accepted job, from any thread, with no lock of the plugin's that
 * deliver() or stop() would need (the node may call deliver() again from inside it).
 * status: a protocol status if there is one (0 otherwise); detail: a short reason for a
 * failure (becomes the timer's last_error; may be NULL). */
typedef void (*skyring_completion_fn)(void* ctx, int outcome, int status, const char* detail);

/* What the node offers the plugin; valid from create() until destroy() returns. */
struct skyring_transport_host {
  uint32_t abi_version; /* SKYRING_TRANSPORT_ABI_VERSION of the node */
  void* ctx;            /* pass to log() */
  /* One log line in the node's log (rate limited by the node), from any thread. */
  void (*log)(void* ctx, int level, const char* message);
};

struct skyring_transport_plugin {
  uint32_t abi_version; /* must be SKYRING_TRANSPORT_ABI_VERSION */
  const char* name;     /* [a-z][a-z0-9_-]{0,31}: the callback.transport value */

  /* Required. config_toml: the [transports.<name>] table as TOML text (config_len bytes,
   * NUL-terminated, "" when the config has none). Returns 0 and sets *state, or -1 with a
   * one-line message in errbuf (errlen bytes including the NUL). */
  int (*create)(const char* config_toml, size_t config_len,
                const struct skyring_transport_host* host, void** state, char* errbuf,
                size_t errlen);

  /* Required. Can (method, uri) be delivered by this transport? 0 yes; -1 no, with a one-line
   * message in errbuf naming the field ("callback.uri ..."), sent to the client with 400.
   * Cheap, non-blocking, thread-safe. */
  int (*validate)(void* state, const char* method, const char* uri, char* errbuf, size_t errlen);

  /* Optional (NULL: the uri itself). The key the node bounds concurrent deliveries by
   * (--max-inflight-per-destination), e.g. "host:port". Writes a NUL-terminated key of at most
   * buflen bytes and returns 0; -1 means "use the uri". Cheap, non-blocking, thread-safe. */
  int (*destination)(void* state, const char* uri, char* buf, size_t buflen);

  /* Required. Starts one attempt and returns at once: 0 accepted (done is called exactly once
   * later or already was), -1 refused (done is not called; the node reports it retryable). */
  int (*deliver)(void* state, const struct skyring_transport_job* job, skyring_completion_fn done,
                 void* done_ctx);

  /* Required. Called once: end every job within timeout_ms, join the threads, return. */
  void (*stop)(void* state, int64_t timeout_ms);

  /* Required. Called once after stop(): free the state. */
  void (*destroy)(void* state);
};

/* The entry point every plugin defines (and exports). */
SKYRING_PLUGIN_EXPORT const struct skyring_transport_plugin* skyring_transport_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* SKYRING_TRANSPORT_PLUGIN_H */
