/* Broken transport plugins for the loader's error tests (plugin_transport_test,
 * test_transport_plugin.py). One source, one defect per build (examples/CMakeLists.txt):
 *   TEST_BAD_ABI      abi_version 999
 *   TEST_BAD_NAME     name "Bad Name"
 *   TEST_NO_DELIVER   deliver == NULL
 *   TEST_FAIL_CREATE  create() fails with a message
 *   TEST_NO_ENTRY     no skyring_transport_plugin_entry symbol at all
 */
#include <stdio.h>

#include "skyring/transport_plugin.h"

static int bad_create(const char* config, size_t config_len,
                      const struct skyring_transport_host* host, void** state, char* errbuf,
                      size_t errlen) {
  (void)config;
  (void)config_len;
  (void)host;
#ifdef TEST_FAIL_CREATE
  (void)state;
  snprintf(errbuf, errlen, "backend unreachable (as configured)\nsecond line");
  return -1;
#else
  (void)errbuf;
  (void)errlen;
  *state = NULL;
  return 0;
#endif
}

static int bad_validate(void* state, const char* method, const char* uri, char* errbuf,
                        size_t errlen) {
  (void)state;
  (void)method;
  (void)uri;
  (void)errbuf;
  (void)errlen;
  return 0;
}

#ifndef TEST_NO_DELIVER
static int bad_deliver(void* state, const struct skyring_transport_job* job,
                       skyring_completion_fn done, void* done_ctx) {
  (void)state;
  (void)job;
  done(done_ctx, SKYRING_OUTCOME_SUCCESS, 0, NULL);
  return 0;
}
#endif

static void bad_stop(void* state, int64_t timeout_ms) {
  (void)state;
  (void)timeout_ms;
}

static void bad_destroy(void* state) {
  (void)state;
}

static const struct skyring_transport_plugin kPlugin = {
#ifdef TEST_BAD_ABI
    .abi_version = 999,
#else
    .abi_version = SKYRING_TRANSPORT_ABI_VERSION,
#endif
#ifdef TEST_BAD_NAME
    .name = "Bad Name",
#else
    .name = "broken",
#endif
    .create = bad_create,
    .validate = bad_validate,
    .destination = NULL,
#ifdef TEST_NO_DELIVER
    .deliver = NULL,
#else
    .deliver = bad_deliver,
#endif
    .stop = bad_stop,
    .destroy = bad_destroy,
};

#ifdef TEST_NO_ENTRY
SKYRING_PLUGIN_EXPORT const struct skyring_transport_plugin* some_other_symbol(void) {
  return &kPlugin;
}
#else
SKYRING_PLUGIN_EXPORT const struct skyring_transport_plugin* skyring_transport_plugin_entry(void) {
  return &kPlugin;
}
#endif
