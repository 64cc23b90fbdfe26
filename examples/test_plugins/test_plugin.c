/* The `test` transport plugin of plugin_transport_test: behaviour chosen by the uri, and a few
 * exported hooks (test_plugin_*) the test finds with dlsym to inspect and drive it.
 *   test:ok        SUCCESS, inside deliver()
 *   test:echo      SUCCESS with the job's fields as detail
 *   test:thread    SUCCESS from a thread of its own
 *   test:twice     SUCCESS, then a second completion (RETRYABLE): the host must ignore it
 *   test:permanent PERMANENT, status 42, "nope"
 *   test:aborted   ABORTED
 *   test:weird     outcome 77 (unknown)
 *   test:refuse    deliver() returns -1
 *   test:refuse-after-done  SUCCESS, then deliver() returns -1 anyway
 *   test:hold...   kept until test_plugin_release(); stop() does not end them
 * destination: the uri up to its first '/', if any. validate: "test:" uris; method "bad" fails.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skyring/transport_plugin.h"

#define MAX_HELD 4096

struct held {
  skyring_completion_fn done;
  void* ctx;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct held g_held[MAX_HELD];
static int g_held_count;
static char g_config[1024];
static int g_stop_calls;
static int g_destroy_calls;

SKYRING_PLUGIN_EXPORT const char* test_plugin_config(void) {
  return g_config;
}

SKYRING_PLUGIN_EXPORT int test_plugin_held(void) {
  pthread_mutex_lock(&g_mu);
  int n = g_held_count;
  pthread_mutex_unlock(&g_mu);
  return n;
}

SKYRING_PLUGIN_EXPORT int test_plugin_stop_calls(void) {
  pthread_mutex_lock(&g_mu);
  int n = g_stop_calls;
  pthread_mutex_unlock(&g_mu);
  return n;
}

SKYRING_PLUGIN_EXPORT int test_plugin_destroy_calls(void) {
  pthread_mutex_lock(&g_mu);
  int n = g_destroy_calls;
  pthread_mutex_unlock(&g_mu);
  return n;
}

/* Completes every held job with `outcome` (no lock held while completing). */
SKYRING_PLUGIN_EXPORT int test_plugin_release(int outcome) {
  static struct held batch[MAX_HELD];
  static pthread_mutex_t release_mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&release_mu);
  pthread_mutex_lock(&g_mu);
  int n = g_held_count;
  memcpy(batch, g_held, sizeof(struct held) * (size_t)n);
  g_held_count = 0;
  pthread_mutex_unlock(&g_mu);
  for (int i = 0; i < n; ++i) batch[i].done(batch[i].ctx, outcome, 0, "released");
  pthread_mutex_unlock(&release_mu);
  return n;
}

static int t_create(const char* config, size_t config_len,
                    const struct skyring_transport_host* host, void** state, char* errbuf,
                    size_t errlen) {
  (void)errbuf;
  (void)errlen;
  pthread_mutex_lock(&g_mu);
  size_t n = config_len < sizeof(g_config) - 1 ? config_len : sizeof(g_config) - 1;
  memcpy(g_config, config, n);
  g_config[n] = '\0';
  pthread_mutex_unlock(&g_mu);
  host->log(host->ctx, SKYRING_LOG_INFO, "test plugin created");
  *state = (void*)host;
  return 0;
}

static int t_validate(void* state, const char* method, const char* uri, char* errbuf,
                      size_t errlen) {
  (void)state;
  if (strncmp(uri, "test:", 5) != 0) {
    snprintf(errbuf, errlen, "callback.uri must start with test:");
    return -1;
  }
  if (strcmp(method, "bad") == 0) {
    snprintf(errbuf, errlen, "callback.method 'bad' is not supported");
    return -1;
  }
  return 0;
}

static int t_destination(void* state, const char* uri, char* buf, size_t buflen) {
  (void)state;
  const char* slash = strchr(uri, '/');
  if (slash == NULL) return -1;
  size_t n = (size_t)(slash - uri);
  if (n + 1 > buflen) return -1;
  memcpy(buf, uri, n);
  buf[n] = '\0';
  return 0;
}

struct thread_arg {
  skyring_completion_fn done;
  void* ctx;
};

static void* complete_later(void* p) {
  struct thread_arg a = *(struct thread_arg*)p;
  free(p);
  a.done(a.ctx, SKYRING_OUTCOME_SUCCESS, 200, "from another thread");
  return NULL;
}

static int t_deliver(void* state, const struct skyring_transport_job* job,
                     skyring_completion_fn done, void* ctx) {
  (void)state;
  const char* what = job->uri + 5;
  if (strcmp(what, "ok") == 0) {
    done(ctx, SKYRING_OUTCOME_SUCCESS, 0, NULL);
  } else if (strcmp(what, "echo") == 0) {
    char d[1024];
    int off = snprintf(d, sizeof(d), "id=%s attempt=%u method=%s kind=%d data=%.*s timeout=%lld",
                       job->timer_id, job->attempt, job->method, job->data_kind, (int)job->data_len,
                       job->data, (long long)job->timeout_ms);
    for (size_t i = 0; i < job->header_count && off > 0 && (size_t)off < sizeof(d); ++i) {
      off += snprintf(d + off, sizeof(d) - (size_t)off, " %s:%s", job->headers[i].name,
                      job->headers[i].value);
    }
    done(ctx, SKYRING_OUTCOME_SUCCESS, 0, d);
  } else if (strcmp(what, "thread") == 0) {
    struct thread_arg* a = malloc(sizeof(*a));
    if (a == NULL) return -1;
    a->done = done;
    a->ctx = ctx;
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, complete_later, a);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      free(a);
      return -1;
    }
  } else if (strcmp(what, "twice") == 0) {
    done(ctx, SKYRING_OUTCOME_SUCCESS, 0, "first");
    done(ctx, SKYRING_OUTCOME_RETRYABLE, 0, "second");
  } else if (strcmp(what, "permanent") == 0) {
    done(ctx, SKYRING_OUTCOME_PERMANENT, 42, "nope");
  } else if (strcmp(what, "aborted") == 0) {
    done(ctx, SKYRING_OUTCOME_ABORTED, 0, "not tried");
  } else if (strcmp(what, "weird") == 0) {
    done(ctx, 77, 0, "odd");
  } else if (strcmp(what, "refuse") == 0) {
    return -1;
  } else if (strcmp(what, "refuse-after-done") == 0) {
    done(ctx, SKYRING_OUTCOME_SUCCESS, 0, "done first");
    return -1;
  } else if (strncmp(what, "hold", 4) == 0) {
    pthread_mutex_lock(&g_mu);
    if (g_held_count >= MAX_HELD) {
      pthread_mutex_unlock(&g_mu);
      return -1;
    }
    g_held[g_held_count].done = done;
    g_held[g_held_count].ctx = ctx;
    ++g_held_count;
    pthread_mutex_unlock(&g_mu);
  } else {
    done(ctx, SKYRING_OUTCOME_PERMANENT, 0, "unknown test uri");
  }
  return 0;
}

static void t_stop(void* state, int64_t timeout_ms) {
  (void)state;
  (void)timeout_ms;
  pthread_mutex_lock(&g_mu);
  ++g_stop_calls;
  pthread_mutex_unlock(&g_mu);
}

static void t_destroy(void* state) {
  (void)state;
  pthread_mutex_lock(&g_mu);
  ++g_destroy_calls;
  pthread_mutex_unlock(&g_mu);
}

static const struct skyring_transport_plugin kPlugin = {
    .abi_version = SKYRING_TRANSPORT_ABI_VERSION,
    .name = "test",
    .create = t_create,
    .validate = t_validate,
    .destination = t_destination,
    .deliver = t_deliver,
    .stop = t_stop,
    .destroy = t_destroy,
};

SKYRING_PLUGIN_EXPORT const struct skyring_transport_plugin* skyring_transport_plugin_entry(void) {
  return &kPlugin;
}
