/* The example transport plugin `file` (docs/plugins.md): each delivery appends the timer's
 * data and a newline to a local file.
 *
 *   callback: {"transport": "file", "method": "post", "uri": "file:///var/spool/timers/out.log"}
 *
 * Settings, from the node's --config file (all optional):
 *
 *   [transports.file]
 *   dir = "/var/spool/timers"   # every uri must name a file below this directory
 *   fsync = false               # fsync after each write (durable before "success")
 *   max_queue = 10000           # deliveries waiting for the writer at most
 *
 * Operation
 * * validate(): the uri is file:// with an empty host and an absolute path, without ".", ".."
 *   or empty segments, '%', '?', '#' or control characters, below `dir` when set. The path is
 *   taken literally (no percent-decoding). The method is not used: any method is accepted.
 * * deliver() checks the uri again (the settings may have changed since the timer was
 *   created: PERMANENT), copies the job into a bounded FIFO and wakes the one writer thread; a
 *   full queue completes at once with RETRYABLE. The writer opens the file with
 *   O_WRONLY|O_APPEND|O_CREAT (mode 0644, directories are not created), writes data + "\n" in
 *   one write() (repeated on a short write), fsyncs if asked, closes it and completes.
 * * Outcome: SUCCESS once written (and synced). Errors the operator can fix (missing
 *   directory ENOENT, permissions EACCES/EPERM, read-only file system, disk full, I/O errors and
 *   any other) are RETRYABLE; errors no retry can fix (the path is a directory EISDIR, name too
 *   long, symlink loop, file too large EFBIG, EINVAL) are PERMANENT.
 *
 * Concurrency: one writer thread, so lines of one node never interleave; O_APPEND keeps
 * concurrent writers (other nodes, other processes) from overwriting each other.
 *
 * Limitations
 * * No timeout on a write: a hung file system (NFS) holds the writer; the node reports such jobs
 *   retryable after their timeout and stop() waits for the write in progress.
 * * A line is exactly the data: data with newlines spans several lines; no data = empty line.
 * * A write that fails half way leaves a partial line; its retry appends the whole line again.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "skyring/transport_plugin.h"

#define FILE_DEFAULT_MAX_QUEUE 10000

struct file_job {
  struct file_job* next;
  char* path;
  char* line; /* data + "\n" */
  size_t line_len;
  skyring_completion_fn done;
  void* done_ctx;
};

struct file_transport {
  const struct skyring_transport_host* host;
  char dir[PATH_MAX]; /* "" = anywhere; no trailing slash */
  int do_fsync;
  size_t max_queue;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct file_job* head;
  struct file_job* tail;
  size_t queued;
  int stopping;
  pthread_t writer;
};

static void set_err(char* errbuf, size_t errlen, const char* msg) {
  if (errlen == 0) return;
  snprintf(errbuf, errlen, "%s", msg);
}

/* ---------------------------------------------------------------- settings (TOML subset)
 * One `key = value` per line; values: "basic" or 'literal' strings, true/false, decimal
 * integers; '#' comments. That is all the node writes for a flat [transports.file] table. */

static const char* skip_ws(const char* p, const char* end) {
  while (p < end && (*p == ' ' || *p == '\t')) ++p;
  return p;
}

/* Parses a string value at p into out (size outlen). Returns the position after it or NULL. */
static const char* parse_string(const char* p, const char* end, char* out, size_t outlen) {
  char quote = *p++;
  size_t n = 0;
  while (p < end && *p != quote) {
    char c = *p++;
    if (quote == '"' && c == '\\') {
      if (p >= end) return NULL;
      char e = *p++;
      switch (e) {
        case '"':
          c = '"';
          break;
        case '\\':
          c = '\\';
          break;
        case 't':
          c = '\t';
          break;
        case 'n':
          c = '\n';
          break;
        case 'r':
          c = '\r';
          break;
        case 'b':
          c = '\b';
          break;
        case 'f':
          c = '\f';
          break;
        default:
          return NULL; /* \u escapes: not needed for paths here */
      }
    }
    if (n + 1 >= outlen) return NULL;
    out[n++] = c;
  }
  if (p >= end) return NULL;
  out[n] = '\0';
  return p + 1;
}

static int parse_config(struct file_transport* t, const char* text, size_t len, char* errbuf,
                        size_t errlen) {
  const char* p = text;
  const char* end = text + len;
  char msg[256];
  while (p < end) {
    const char* eol = memchr(p, '\n', (size_t)(end - p));
    const char* line_end = eol ? eol : end;
    const char* q = skip_ws(p, line_end);
    p = eol ? eol + 1 : end;
    if (q == line_end || *q == '#' || *q == '\r') continue;
    const char* key = q;
    while (q < line_end && *q != ' ' && *q != '\t' && *q != '=') ++q;
    size_t key_len = (size_t)(q - key);
    q = skip_ws(q, line_end);
    if (q == line_end || *q != '=') {
      snprintf(msg, sizeof(msg), "[transports.file]: cannot read line '%.*s'",
               (int)(line_end - key > 60 ? 60 : line_end - key), key);
      set_err(errbuf, errlen, msg);
      return -1;
    }
    q = skip_ws(q + 1, line_end);
    char value[PATH_MAX];
    int is_string = 0;
    if (q < line_end && (*q == '"' || *q == '\'')) {
      q = parse_string(q, line_end, value, sizeof(value));
      if (q == NULL) {
        snprintf(msg, sizeof(msg), "[transports.file]: bad string value of '%.*s'", (int)key_len,
                 key);
        set_err(errbuf, errlen, msg);
        return -1;
      }
      is_string = 1;
    } else {
      size_t n = 0;
      while (q < line_end && *q != ' ' && *q != '\t' && *q != '#' && *q != '\r' &&
             n + 1 < sizeof(value)) {
        value[n++] = *q++;
      }
      value[n] = '\0';
    }
    q = skip_ws(q, line_end);
    if (q < line_end && *q != '#' && *q != '\r') {
      snprintf(msg, sizeof(msg), "[transports.file]: unexpected text after the value of '%.*s'",
               (int)key_len, key);
      set_err(errbuf, errlen, msg);
      return -1;
    }
    if (key_len == 3 && memcmp(key, "dir", 3) == 0 && is_string) {
      size_t n = strlen(value);
      while (n > 1 && value[n - 1] == '/') value[--n] = '\0';
      if (value[0] != '/') {
        set_err(errbuf, errlen, "[transports.file] dir must be an absolute path");
        return -1;
      }
      if (strcmp(value, "/") == 0) value[0] = '\0';
      memcpy(t->dir, value, strlen(value) + 1);
    } else if (key_len == 5 && memcmp(key, "fsync", 5) == 0 && !is_string &&
               (strcmp(value, "true") == 0 || strcmp(value, "false") == 0)) {
      t->do_fsync = strcmp(value, "true") == 0;
    } else if (key_len == 9 && memcmp(key, "max_queue", 9) == 0 && !is_string) {
      char* e = NULL;
      errno = 0;
      long long v = strtoll(value, &e, 10);
      if (errno != 0 || e == value || *e != '\0' || v < 1 || v > 10000000) {
        set_err(errbuf, errlen, "[transports.file] max_queue must be an integer 1..10000000");
        return -1;
      }
      t->max_queue = (size_t)v;
    } else {
      snprintf(msg, sizeof(msg),
               "[transports.file]: unknown key or bad value '%.*s' (known: dir = \"/path\", "
               "fsync = true|false, max_queue = N)",
               (int)key_len, key);
      set_err(errbuf, errlen, msg);
      return -1;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- uri */

/* The path of a valid uri (pointer into uri), or NULL with a message. */
static const char* uri_path(const struct file_transport* t, const char* uri, char* errbuf,
                            size_t errlen) {
  static const char kScheme[] = "file://";
  if (strncmp(uri, kScheme, sizeof(kScheme) - 1) != 0 || uri[sizeof(kScheme) - 1] != '/') {
    set_err(errbuf, errlen, "callback.uri must be file:///absolute/path for transport 'file'");
    return NULL;
  }
  const char* path = uri + sizeof(kScheme) - 1;
  size_t len = strlen(path);
  if (len >= PATH_MAX) {
    set_err(errbuf, errlen, "callback.uri: path too long");
    return NULL;
  }
  for (const char* c = path; *c; ++c) {
    if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '%' || *c == '?' || *c == '#') {
      set_err(errbuf, errlen,
              "callback.uri: the path must not contain '%', '?', '#' or control characters");
      return NULL;
    }
  }
  /* Segments: none empty, "." or "..". */
  const char* seg = path + 1;
  for (;;) {
    const char* slash = strchr(seg, '/');
    size_t n = slash ? (size_t)(slash - seg) : strlen(seg);
    if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')) {
      set_err(errbuf, errlen,
              "callback.uri: the path must name a file, without empty, '.' or '..' segments");
      return NULL;
    }
    if (!slash) break;
    seg = slash + 1;
  }
  size_t dl = strlen(t->dir);
  if (dl > 0 && (strncmp(path, t->dir, dl) != 0 || path[dl] != '/')) {
    char msg[PATH_MAX + 64];
    snprintf(msg, sizeof(msg), "callback.uri: the file must be below %s", t->dir);
    set_err(errbuf, errlen, msg);
    return NULL;
  }
  return path;
}

/* ---------------------------------------------------------------- the writer */

static int permanent_errno(int e) {
  return e == EISDIR || e == ENAMETOOLONG || e == ELOOP || e == EINVAL || e == EFBIG ||
         e == ENXIO; /* ENXIO: a FIFO with no reader (opened non-blocking) */
}

static void finish_with_errno(struct file_job* j, const char* what, int e) {
  char reason[128];
  if (strerror_r(e, reason, sizeof(reason)) != 0) snprintf(reason, sizeof(reason), "errno %d", e);
  char detail[PATH_MAX + 200];
  snprintf(detail, sizeof(detail), "%s %s: %s", what, j->path, reason);
  j->done(j->done_ctx, permanent_errno(e) ? SKYRING_OUTCOME_PERMANENT : SKYRING_OUTCOME_RETRYABLE,
          0, detail);
}

static void write_job(const struct file_transport* t, struct file_job* j) {
  /* O_NONBLOCK: a FIFO without a reader (or a device) must not hang the one writer thread;
   * then only regular files are written (O_NONBLOCK means nothing for them). */
  int fd = open(j->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
  if (fd < 0) {
    finish_with_errno(j, "open", errno);
    return;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    j->done(j->done_ctx, SKYRING_OUTCOME_PERMANENT, 0, "the uri does not name a regular file");
    return;
  }
  size_t off = 0;
  while (off < j->line_len) {
    ssize_t n = write(fd, j->line + off, j->line_len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      close(fd);
      finish_with_errno(j, "write", e);
      return;
    }
    off += (size_t)n;
  }
  if (t->do_fsync && fsync(fd) != 0) {
    int e = errno;
    close(fd);
    finish_with_errno(j, "fsync", e);
    return;
  }
  if (close(fd) != 0 && errno != EINTR) {
    finish_with_errno(j, "close", errno);
    return;
  }
  j->done(j->done_ctx, SKYRING_OUTCOME_SUCCESS, 0, NULL);
}

static void free_job(struct file_job* j) {
  free(j->path);
  free(j->line);
  free(j);
}

static void* writer_main(void* arg) {
  struct file_transport* t = arg;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (t->head == NULL && !t->stopping) pthread_cond_wait(&t->cv, &t->mu);
    if (t->stopping) break; /* stop() aborts what is still queued */
    struct file_job* j = t->head;
    t->head = j->next;
    if (t->head == NULL) t->tail = NULL;
    --t->queued;
    pthread_mutex_unlock(&t->mu);
    write_job(t, j); /* completes with no lock held */
    free_job(j);
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/* ---------------------------------------------------------------- the ABI */

static int file_create(const char* config, size_t config_len,
                       const struct skyring_transport_host* host, void** state, char* errbuf,
                       size_t errlen) {
  struct file_transport* t = calloc(1, sizeof(*t));
  if (t == NULL) {
    set_err(errbuf, errlen, "out of memory");
    return -1;
  }
  t->host = host;
  t->max_queue = FILE_DEFAULT_MAX_QUEUE;
  if (parse_config(t, config, config_len, errbuf, errlen) != 0) {
    free(t);
    return -1;
  }
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  int rc = pthread_create(&t->writer, NULL, writer_main, t);
  if (rc != 0) {
    set_err(errbuf, errlen, "cannot start the writer thread");
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
    return -1;
  }
  char msg[PATH_MAX + 100];
  snprintf(msg, sizeof(msg), "appending to files %s%s (fsync %s, queue %zu)",
           t->dir[0] ? "below " : "anywhere", t->dir, t->do_fsync ? "on" : "off", t->max_queue);
  host->log(host->ctx, SKYRING_LOG_INFO, msg);
  *state = t;
  return 0;
}

static int file_validate(void* state, const char* method, const char* uri, char* errbuf,
                         size_t errlen) {
  (void)method;
  return uri_path(state, uri, errbuf, errlen) ? 0 : -1;
}

static int file_deliver(void* state, const struct skyring_transport_job* job,
                        skyring_completion_fn done, void* done_ctx) {
  struct file_transport* t = state;
  char err[PATH_MAX + 64];
  const char* path = uri_path(t, job->uri, err, sizeof(err));
  if (path == NULL) {
    done(done_ctx, SKYRING_OUTCOME_PERMANENT, 0, err);
    return 0;
  }
  struct file_job* j = calloc(1, sizeof(*j));
  char* p = j ? strdup(path) : NULL;
  char* line = p ? malloc(job->data_len + 1) : NULL;
  if (line == NULL) {
    free(p);
    free(j);
    done(done_ctx, SKYRING_OUTCOME_RETRYABLE, 0, "file transport: out of memory");
    return 0;
  }
  memcpy(line, job->data, job->data_len);
  line[job->data_len] = '\n';
  j->path = p;
  j->line = line;
  j->line_len = job->data_len + 1;
  j->done = done;
  j->done_ctx = done_ctx;

  pthread_mutex_lock(&t->mu);
  if (t->stopping || t->queued >= t->max_queue) {
    int stopping = t->stopping;
    pthread_mutex_unlock(&t->mu);
    free_job(j);
    if (stopping) return -1;
    done(done_ctx, SKYRING_OUTCOME_RETRYABLE, 0, "file transport: queue full");
    return 0;
  }
  if (t->tail)
    t->tail->next = j;
  else
    t->head = j;
  t->tail = j;
  ++t->queued;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  return 0;
}

/* Ends after the write in progress (file writes are short; see Limitations); whatever is
 * still queued was never attempted: ABORTED. */
static void file_stop(void* state, int64_t timeout_ms) {
  (void)timeout_ms;
  struct file_transport* t = state;
  pthread_mutex_lock(&t->mu);
  if (t->stopping) {
    pthread_mutex_unlock(&t->mu);
    return;
  }
  t->stopping = 1;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  pthread_join(t->writer, NULL);
  struct file_job* j = t->head;
  t->head = t->tail = NULL;
  t->queued = 0;
  while (j) {
    struct file_job* next = j->next;
    j->done(j->done_ctx, SKYRING_OUTCOME_ABORTED, 0, "file transport stopped");
    free_job(j);
    j = next;
  }
}

static void file_destroy(void* state) {
  struct file_transport* t = state;
  pthread_cond_destroy(&t->cv);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

static const struct skyring_transport_plugin kFilePlugin = {
    .abi_version = SKYRING_TRANSPORT_ABI_VERSION,
    .name = "file",
    .create = file_create,
    .validate = file_validate,
    .destination = NULL, /* the uri: one file, one destination */
    .deliver = file_deliver,
    .stop = file_stop,
    .destroy = file_destroy,
};

SKYRING_PLUGIN_EXPORT const struct skyring_transport_plugin* skyring_transport_plugin_entry(void) {
  return &kFilePlugin;
}
