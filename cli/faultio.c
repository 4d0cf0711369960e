/* faultio.c: the crash hook of the system tests (see faultio.h). */
#include "faultio.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NAMED_FDS 4096 /* file names remembered for the trace */

static struct {
  pthread_mutex_t lock;
  const loom_io *inner;
  uint64_t count;            /* operations counted so far */
  uint64_t crash_at;         /* 0: never */
  bool counted[LOOM_IO_OP_COUNT];
  const char *count_path;
  int trace_fd;              /* -1: no trace */
  char *fd_names[NAMED_FDS];
  uint64_t flip_page;        /* UINT64_MAX: no page of "image" is flipped */
  uint64_t flips_left;       /* LOOMSHIP_FLIP_IMAGE_TIMES [UINT64_MAX] */
} hook = {.lock = PTHREAD_MUTEX_INITIALIZER, .trace_fd = -1,
           .flip_page = UINT64_MAX, .flips_left = UINT64_MAX};

static pthread_once_t hook_once = PTHREAD_ONCE_INIT;
static const loom_io *hook_io;  /* NULL: the hook is off */

static void write_all(int fd, const char *text, size_t len)
{
  while (len > 0) {
    ssize_t n = write(fd, text, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    text += n;
    len -= (size_t)n;
  }
}

/* The name fd was opened with (under the lock). */
static const char *fd_name(int fd)
{
  return fd >= 0 && fd < NAMED_FDS && hook.fd_names[fd] ? hook.fd_names[fd] : "?";
}

/* Count one operation on name (NULL: the file fd); kill the process if it
 * is the chosen one. */
static void before(loom_io_op op, int fd, const char *name)
{
  if (!hook.counted[op])
    return;
  pthread_mutex_lock(&hook.lock);
  uint64_t k = ++hook.count;
  if (!name)
    name = fd_name(fd);
  if (hook.trace_fd >= 0) {
    char line[512];
    int n = snprintf(line, sizeof line, "%" PRIu64 " %s %s%s\n", k, loom_io_op_name(op),
                     name, k == hook.crash_at ? " KILLED-BEFORE" : "");
    if (n > 0)
      write_all(hook.trace_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  }
  if (k == hook.crash_at)
    raise(SIGKILL);
  pthread_mutex_unlock(&hook.lock);
}

static void remember_fd(int fd, const char *name)
{
  if (fd < 0 || fd >= NAMED_FDS)
    return;
  pthread_mutex_lock(&hook.lock);
  free(hook.fd_names[fd]);
  hook.fd_names[fd] = strdup(name);
  pthread_mutex_unlock(&hook.lock);
}

static void forget_fd(int fd)
{
  if (fd < 0 || fd >= NAMED_FDS)
    return;
  pthread_mutex_lock(&hook.lock);
  free(hook.fd_names[fd]);
  hook.fd_names[fd] = NULL;
  pthread_mutex_unlock(&hook.lock);
}

static int f_open(void *ctx, int dirfd, const char *name, int flags, mode_t mode)
{
  (void)ctx;
  before(LOOM_IO_OPEN, -1, name);
  int fd = hook.inner->open(hook.inner->ctx, dirfd, name, flags, mode);
  if (fd >= 0 && (hook.trace_fd >= 0 || hook.flip_page != UINT64_MAX))
    remember_fd(fd, name);
  return fd;
}

static ssize_t f_pread(void *ctx, int fd, void *buf, size_t len, off_t off)
{
  (void)ctx;
  before(LOOM_IO_PREAD, fd, NULL);
  return hook.inner->pread(hook.inner->ctx, fd, buf, len, off);
}

/* LOOMSHIP_FLIP_IMAGE_PAGE: a write to "image" that covers the first
 * byte of the chosen page lands with that byte's lowest bit flipped (a
 * disk that returns success and stores something else). */
static ssize_t flip_write(int fd, const void *buf, size_t len, off_t off)
{
  uint64_t at = hook.flip_page * LOOM_PAGE_SIZE;
  bool covers = at >= (uint64_t)off && at < (uint64_t)off + len;
  pthread_mutex_lock(&hook.lock);
  bool flip = covers && !strcmp(fd_name(fd), "image") && hook.flips_left > 0;
  if (flip && hook.flips_left != UINT64_MAX)
    hook.flips_left--;
  pthread_mutex_unlock(&hook.lock);
  if (!flip)
    return hook.inner->pwrite(hook.inner->ctx, fd, buf, len, off);
  uint8_t *copy = malloc(len);
  if (!copy)
    return -ENOMEM;
  memcpy(copy, buf, len);
  copy[at - (uint64_t)off] ^= 1;
  ssize_t n = hook.inner->pwrite(hook.inner->ctx, fd, copy, len, off);
  free(copy);
  return n;
}

static ssize_t f_pwrite(void *ctx, int fd, const void *buf, size_t len, off_t off)
{
  (void)ctx;
  before(LOOM_IO_PWRITE, fd, NULL);
  if (hook.flip_page != UINT64_MAX)
    return flip_write(fd, buf, len, off);
  return hook.inner->pwrite(hook.inner->ctx, fd, buf, len, off);
}

static ssize_t f_pwritev(void *ctx, int fd, const struct iovec *iov, int iovcnt, off_t off)
{
  (void)ctx;
  before(LOOM_IO_PWRITE, fd, NULL);
  if (hook.inner->pwritev)
    return hook.inner->pwritev(hook.inner->ctx, fd, iov, iovcnt, off);
  size_t done = 0;
  for (int i = 0; i < iovcnt; i++) {
    ssize_t n = hook.inner->pwrite(hook.inner->ctx, fd, iov[i].iov_base, iov[i].iov_len,
                                   off + (off_t)done);
    if (n < 0)
      return n;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

static int f_fsync(void *ctx, int fd)
{
  (void)ctx;
  before(LOOM_IO_FSYNC, fd, NULL);
  return hook.inner->fsync(hook.inner->ctx, fd);
}

static int f_ftruncate(void *ctx, int fd, off_t len)
{
  (void)ctx;
  before(LOOM_IO_FTRUNCATE, fd, NULL);
  return hook.inner->ftruncate(hook.inner->ctx, fd, len);
}

static int f_rename(void *ctx, int olddirfd, const char *oldname, int newdirfd,
                    const char *newname)
{
  (void)ctx;
  before(LOOM_IO_RENAME, -1, newname);
  return hook.inner->rename(hook.inner->ctx, olddirfd, oldname, newdirfd, newname);
}

static int f_unlink(void *ctx, int dirfd, const char *name, int flags)
{
  (void)ctx;
  before(LOOM_IO_UNLINK, -1, name);
  return hook.inner->unlink(hook.inner->ctx, dirfd, name, flags);
}

static int f_close(void *ctx, int fd)
{
  (void)ctx;
  before(LOOM_IO_CLOSE, fd, NULL);
  if (hook.trace_fd >= 0)
    forget_fd(fd);
  return hook.inner->close(hook.inner->ctx, fd);
}

static int f_mkdir(void *ctx, int dirfd, const char *name, mode_t mode)
{
  (void)ctx;
  before(LOOM_IO_MKDIR, -1, name);
  return hook.inner->mkdir(hook.inner->ctx, dirfd, name, mode);
}

/* Not a crash point: it changes nothing a crash could observe. */
static int f_reserve(void *ctx, int fd, off_t off, off_t len)
{
  (void)ctx;
  return hook.inner->reserve ? hook.inner->reserve(hook.inner->ctx, fd, off, len)
                             : -EOPNOTSUPP;
}

static const loom_io faultio = {
    .open = f_open,
    .pread = f_pread,
    .pwrite = f_pwrite,
    .fsync = f_fsync,
    .ftruncate = f_ftruncate,
    .rename = f_rename,
    .unlink = f_unlink,
    .close = f_close,
    .mkdir = f_mkdir,
    .pwritev = f_pwritev,
    .reserve = f_reserve,
};

static void write_count(void)
{
  int fd = open(hook.count_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return;
  pthread_mutex_lock(&hook.lock);
  char line[32];
  int n = snprintf(line, sizeof line, "%" PRIu64 "\n", hook.count);
  pthread_mutex_unlock(&hook.lock);
  write_all(fd, line, (size_t)n);
  close(fd);
}

/* Parse LOOMSHIP_CRASH_OP into hook.counted; false on an unknown name. */
static bool parse_ops(const char *list)
{
  char *copy = strdup(list), *save = NULL;
  if (!copy)
    return false;
  bool ok = true;
  for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
    bool found = false;
    for (int op = 0; op < LOOM_IO_OP_COUNT; op++)
      if (!strcmp(name, loom_io_op_name((loom_io_op)op)))
        hook.counted[op] = found = true;
    if (!found) {
      fprintf(stderr, "loomship: LOOMSHIP_CRASH_OP: unknown operation '%s' (hook off)\n",
              name);
      ok = false;
    }
  }
  free(copy);
  return ok;
}

static void setup(void)
{
  const char *at = getenv("LOOMSHIP_CRASH_AT"), *ops = getenv("LOOMSHIP_CRASH_OP");
  const char *count = getenv("LOOMSHIP_CRASH_COUNT"), *trace = getenv("LOOMSHIP_CRASH_TRACE");
  const char *flip = getenv("LOOMSHIP_FLIP_IMAGE_PAGE");
  if (!at && !ops && !count && !trace && !flip)
    return;
  if (flip) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(flip, &end, 10);
    if (errno || end == flip || *end || n == UINT64_MAX) {
      fprintf(stderr, "loomship: LOOMSHIP_FLIP_IMAGE_PAGE must be a page number (hook off)\n");
      return;
    }
    hook.flip_page = n;
    const char *times = getenv("LOOMSHIP_FLIP_IMAGE_TIMES");
    unsigned long long k = times ? strtoull(times, &end, 10) : 0;
    if (times && (end == times || *end || k == 0)) {
      fprintf(stderr, "loomship: LOOMSHIP_FLIP_IMAGE_TIMES must be a number >= 1 (hook off)\n");
      hook.flip_page = UINT64_MAX;
      return;
    }
    if (times)
      hook.flips_left = k;
  }
  if (at) {
    char *end;
    errno = 0;
    unsigned long long k = strtoull(at, &end, 10);
    if (errno || end == at || *end || k == 0) {
      fprintf(stderr, "loomship: LOOMSHIP_CRASH_AT must be a number >= 1 (hook off)\n");
      return;
    }
    hook.crash_at = k;
  }
  if (ops) {
    if (!parse_ops(ops))
      return;
  } else {
    for (int op = 0; op < LOOM_IO_OP_COUNT; op++)
      hook.counted[op] = true;
  }
  if (trace) {
    hook.trace_fd = open(trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (hook.trace_fd < 0)
      fprintf(stderr, "loomship: LOOMSHIP_CRASH_TRACE: %s: %s\n", trace, strerror(errno));
  }
  if (count) {
    hook.count_path = count;
    atexit(write_count);
  }
  hook.inner = loom_io_posix();
  hook_io = &faultio;
}

const loom_io *faultio_from_env(void)
{
  pthread_once(&hook_once, setup);
  return hook_io;
}

uint64_t faultio_receive_log_segment_bytes(void)
{
  const char *v = getenv("LOOMSHIP_RECEIVE_LOG_SEGMENT_BYTES");
  char *end = NULL;
  unsigned long long n = v ? strtoull(v, &end, 10) : 0;
  if (v && (end == v || *end != '\0')) {
    fprintf(stderr, "LOOMSHIP_RECEIVE_LOG_SEGMENT_BYTES=%s: not a number\n", v);
    return 0;
  }
  return (uint64_t)n;
}

bool faultio_archiver_start_fails(void)
{
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  static long long left = -1; /* -1: the variable not read yet */
  pthread_mutex_lock(&mu);
  if (left < 0) {
    const char *v = getenv("LOOMSHIP_FAIL_ARCHIVER_STARTS");
    char *end = NULL;
    long long n = v ? strtoll(v, &end, 10) : 0;
    if (v && (end == v || *end != '\0' || n < 0)) {
      fprintf(stderr, "LOOMSHIP_FAIL_ARCHIVER_STARTS=%s: not a number\n", v);
      n = 0;
    }
    left = n;
  }
  bool fail = left > 0;
  if (fail)
    left--;
  pthread_mutex_unlock(&mu);
  return fail;
}

static int ack_fd = -1;

static void ack_log_open(void)
{
  const char *path = getenv("LOOMSHIP_ACK_LOG");
  if (path)
    ack_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

void faultio_note_ack(const loom_position *p)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, ack_log_open);
  if (ack_fd < 0)
    return;
  char line[96];
  int n = snprintf(line, sizeof line, "seq %" PRIu64 " epoch %" PRIu64 " checksum %016" PRIx64 "\n",
                   p->seq, p->epoch, p->checksum);
  if (n > 0)
    write_all(ack_fd, line, (size_t)n);
}

/* ---------------------------------------------------------------------- */
/* The archive's object store: its own count (LOOMSHIP_CRASH_STORE_*) */

static struct {
  pthread_mutex_t lock;
  uint64_t count, crash_at; /* crash_at 0: never */
  uint64_t matched;         /* requests that match the pattern */
  const char *match;        /* fnmatch pattern on "OP KEY", or NULL: all */
  int trace_fd;             /* -1: no trace */
  bool on;
} store_hook = {.lock = PTHREAD_MUTEX_INITIALIZER, .trace_fd = -1};

static void store_request(void *ctx, const char *op, const char *key)
{
  (void)ctx;
  pthread_mutex_lock(&store_hook.lock);
  uint64_t k = ++store_hook.count;
  char what[600];
  snprintf(what, sizeof what, "%s %s", op, key);
  bool kill = store_hook.crash_at != 0 &&
              (!store_hook.match || fnmatch(store_hook.match, what, 0) == 0) &&
              ++store_hook.matched == store_hook.crash_at;
  if (store_hook.trace_fd >= 0) {
    char line[640];
    int n = snprintf(line, sizeof line, "%" PRIu64 " %s%s\n", k, what,
                     kill ? " KILLED-BEFORE" : "");
    if (n > 0)
      write_all(store_hook.trace_fd, line,
                (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  }
  if (kill)
    raise(SIGKILL);
  pthread_mutex_unlock(&store_hook.lock);
}

static void store_setup(void)
{
  const char *at = getenv("LOOMSHIP_CRASH_STORE_AT");
  const char *trace = getenv("LOOMSHIP_CRASH_STORE_TRACE");
  if (!at && !trace)
    return;
  if (at) {
    char *end;
    errno = 0;
    unsigned long long k = strtoull(at, &end, 10);
    if (errno || end == at || *end || k == 0) {
      fprintf(stderr, "loomship: LOOMSHIP_CRASH_STORE_AT must be a number >= 1 "
                      "(hook off)\n");
      return;
    }
    store_hook.crash_at = k;
  }
  store_hook.match = getenv("LOOMSHIP_CRASH_STORE_MATCH");
  if (trace) {
    store_hook.trace_fd = open(trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (store_hook.trace_fd < 0)
      fprintf(stderr, "loomship: LOOMSHIP_CRASH_STORE_TRACE: %s: %s\n", trace,
              strerror(errno));
  }
  store_hook.on = true;
}

faultio_request_fn faultio_store_hook(void)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, store_setup);
  return store_hook.on ? store_request : NULL;
}
