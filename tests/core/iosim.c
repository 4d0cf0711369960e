/*
 * iosim.c: the test I/O simulator (see iosim.h for the model).
 *
 * DESIGN
 *
 *   Every call goes through begin_op(): it takes the op index, records the
 *   trace, runs the hook, performs the kill check and decides whether a
 *   fault is injected. Then the real system call runs, and only if it
 *   succeeded is the model updated (a failed call changed nothing, except a
 *   partial pwrite whose written prefix is recorded).
 *
 *   Model: an array of inodes (never freed before iosim_destroy, so an
 *   index stays valid). Inode 0 is the tracked root.
 *     file: durable bytes + ops since the last fsync (write/truncate).
 *     dir:  current entries, durable entries (as of the last fsync), and
 *           the unsynced changes since (each with a global sequence number;
 *           a rename is one number in both of its directories).
 *   fsync(file): apply its ops to the durable bytes.  fsync(dir): durable
 *   entries := current entries.  A power cut walks the durable entries
 *   from the root (plus, with IOSIM_CUT_DIR_RANDOM, a random in-order
 *   prefix of the unsynced changes, as a journal replays) and writes each
 *   file's durable bytes with a choice over its ops. Choices are pure
 *   functions of (seed, inode, op number, offset): the same inode reached
 *   by two names gets the same bytes, and a cut is reproducible.
 *
 *   Invariant M1: for every tracked inode, durable + all ops == the real
 *   file's content, and durable entries + all changes == current entries.
 *   (Checked by the simulator's tests through iosim_powercut with
 *   IOSIM_CUT_KEEP against the real tree.)
 */
#include "iosim.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONE SIZE_MAX
#define MAX_FAULTS 8
#define MAX_DEPTH 64
#define TRACE_LIMIT 4000000u

typedef struct byte_buf {
  uint8_t *p;
  size_t len, cap;
} byte_buf;

typedef struct file_op {
  int truncate;   /* 1: set the length to off; 0: write data at off */
  uint64_t off;
  size_t len;
  uint8_t *data;
} file_op;

typedef struct dir_entry {
  char *name;
  size_t node;
} dir_entry;

typedef struct entry_set {
  dir_entry *v;
  size_t n, cap;
} entry_set;

typedef struct dir_change {
  int add;        /* 1: name -> node set (replacing); 0: name removed */
  char *name;
  size_t node;
  uint64_t seq;   /* global order; a rename's two halves share it */
} dir_change;

typedef struct sim_node {
  int is_dir;
  byte_buf durable;               /* file */
  file_op *ops;
  size_t nops, ops_cap;
  entry_set current, durable_set; /* dir */
  dir_change *changes;
  size_t nchanges, changes_cap;
} sim_node;

typedef struct fd_slot {
  int known;
  int tracked;
  size_t node;
  char *label;
} fd_slot;

typedef struct trace_rec {
  loom_io_op op;
  char *path;
} trace_rec;

struct iosim {
  loom_io io;
  pthread_mutex_t mutex;
  char *root; /* realpath, NULL when nothing is tracked */
  sim_node **nodes;
  size_t nnodes, nodes_cap;
  fd_slot *fds;
  size_t nfds;
  uint64_t count;
  uint64_t count_op[LOOM_IO_OP_COUNT];
  trace_rec *trace;
  size_t ntrace, trace_cap;
  iosim_fault faults[MAX_FAULTS];
  char fault_paths[MAX_FAULTS][64];
  uint64_t fault_seen[MAX_FAULTS]; /* matching ops so far (path faults) */
  uint64_t fault_fired[MAX_FAULTS]; /* op index of its first firing */
  size_t nfaults;
  uint64_t injected, first_fault;
  uint64_t kill_at;
  iosim_hook_fn hook;
  void *hook_ctx;
  uint64_t model_errors;
  uint64_t adopted;
  uint64_t change_seq;
  uint64_t drop_fsync;
  int drop_reached;
  char *drop_path;
};

/* Outcome of begin_op(). */
typedef struct op_verdict {
  int err;         /* 0, or the errno to fail with */
  int short_write; /* with err: write half first */
} op_verdict;

/* A name resolved against the model. */
typedef struct resolved {
  int tracked;        /* the path lies in the tracked tree */
  size_t parent;      /* its directory inode; NONE for the root itself */
  size_t target;      /* the inode the name currently names, or NONE */
  char leaf[NAME_MAX + 1];
  char label[PATH_MAX];
} resolved;

/* ---------------------------------------------------------------------- */
/* Small helpers */

static uint64_t mix64(uint64_t x)
{
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

static uint64_t choice(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
  return mix64(seed ^ mix64(a ^ mix64(b ^ mix64(c + 0x51))));
}

static int buf_reserve(byte_buf *b, size_t len)
{
  if (len <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < len)
    cap *= 2;
  uint8_t *p = realloc(b->p, cap);
  if (!p)
    return ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_set_len(byte_buf *b, size_t len)
{
  if (len > b->len) {
    int rc = buf_reserve(b, len);
    if (rc)
      return rc;
    memset(b->p + b->len, 0, len - b->len);
  }
  b->len = len;
  return 0;
}

static int buf_write(byte_buf *b, uint64_t off, const uint8_t *data, size_t len)
{
  if (off + len > b->len) {
    int rc = buf_set_len(b, (size_t)(off + len));
    if (rc)
      return rc;
  }
  memcpy(b->p + off, data, len);
  return 0;
}

static int buf_copy(byte_buf *dst, const byte_buf *src)
{
  dst->len = 0;
  int rc = buf_reserve(dst, src->len);
  if (rc)
    return rc;
  if (src->len)
    memcpy(dst->p, src->p, src->len);
  dst->len = src->len;
  return 0;
}

/* Copy src into dst of size bytes, truncating. */
static void copy_str(char *dst, size_t size, const char *src)
{
  size_t n = strlen(src);
  if (n >= size)
    n = size - 1;
  memcpy(dst, src, n);
  dst[n] = 0;
}

/* Join a and b with one '/' into out (truncating safely). */
static void path_join(char *out, size_t size, const char *a, const char *b)
{
  if (!a[0] || !strcmp(a, "."))
    snprintf(out, size, "%s", b);
  else if (!b[0])
    snprintf(out, size, "%s", a);
  else
    snprintf(out, size, "%s/%s", a, b);
}

/* ---------------------------------------------------------------------- */
/* Entry sets */

static size_t set_find(const entry_set *s, const char *name)
{
  for (size_t i = 0; i < s->n; i++)
    if (!strcmp(s->v[i].name, name))
      return i;
  return NONE;
}

static int set_put(entry_set *s, const char *name, size_t node)
{
  size_t i = set_find(s, name);
  if (i != NONE) {
    s->v[i].node = node;
    return 0;
  }
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    dir_entry *v = realloc(s->v, cap * sizeof *v);
    if (!v)
      return ENOMEM;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n].name = strdup(name);
  if (!s->v[s->n].name)
    return ENOMEM;
  s->v[s->n].node = node;
  s->n++;
  return 0;
}

static void set_remove(entry_set *s, const char *name)
{
  size_t i = set_find(s, name);
  if (i == NONE)
    return;
  free(s->v[i].name);
  s->v[i] = s->v[s->n - 1];
  s->n--;
}

static void set_clear(entry_set *s)
{
  for (size_t i = 0; i < s->n; i++)
    free(s->v[i].name);
  s->n = 0;
}

static int set_copy(entry_set *dst, const entry_set *src)
{
  set_clear(dst);
  for (size_t i = 0; i < src->n; i++) {
    int rc = set_put(dst, src->v[i].name, src->v[i].node);
    if (rc)
      return rc;
  }
  return 0;
}

static void set_free(entry_set *s)
{
  set_clear(s);
  free(s->v);
  s->v = NULL;
  s->cap = 0;
}

/* ---------------------------------------------------------------------- */
/* Inodes */

static size_t node_new(iosim *sim, int is_dir)
{
  if (sim->nnodes == sim->nodes_cap) {
    size_t cap = sim->nodes_cap ? sim->nodes_cap * 2 : 64;
    sim_node **v = realloc(sim->nodes, cap * sizeof *v);
    if (!v)
      return NONE;
    sim->nodes = v;
    sim->nodes_cap = cap;
  }
  sim_node *n = calloc(1, sizeof *n);
  if (!n)
    return NONE;
  n->is_dir = is_dir;
  sim->nodes[sim->nnodes] = n;
  return sim->nnodes++;
}

static void file_ops_clear(sim_node *n)
{
  for (size_t i = 0; i < n->nops; i++)
    free(n->ops[i].data);
  n->nops = 0;
}

static void dir_changes_clear(sim_node *n)
{
  for (size_t i = 0; i < n->nchanges; i++)
    free(n->changes[i].name);
  n->nchanges = 0;
}

static void node_free(sim_node *n)
{
  free(n->durable.p);
  file_ops_clear(n);
  free(n->ops);
  set_free(&n->current);
  set_free(&n->durable_set);
  dir_changes_clear(n);
  free(n->changes);
  free(n);
}

static int file_op_add(sim_node *n, int truncate, uint64_t off,
                       const void *data, size_t len)
{
  if (n->nops == n->ops_cap) {
    size_t cap = n->ops_cap ? n->ops_cap * 2 : 16;
    file_op *v = realloc(n->ops, cap * sizeof *v);
    if (!v)
      return ENOMEM;
    n->ops = v;
    n->ops_cap = cap;
  }
  file_op *op = &n->ops[n->nops];
  op->truncate = truncate;
  op->off = off;
  op->len = len;
  op->data = NULL;
  if (!truncate && len) {
    op->data = malloc(len);
    if (!op->data)
      return ENOMEM;
    memcpy(op->data, data, len);
  }
  n->nops++;
  return 0;
}

static int file_op_apply(byte_buf *b, const file_op *op)
{
  if (op->truncate)
    return buf_set_len(b, (size_t)op->off);
  return buf_write(b, op->off, op->data, op->len);
}

static int dir_change_add(sim_node *d, int add, const char *name, size_t node,
                          uint64_t seq)
{
  if (d->nchanges == d->changes_cap) {
    size_t cap = d->changes_cap ? d->changes_cap * 2 : 16;
    dir_change *v = realloc(d->changes, cap * sizeof *v);
    if (!v)
      return ENOMEM;
    d->changes = v;
    d->changes_cap = cap;
  }
  dir_change *c = &d->changes[d->nchanges];
  c->add = add;
  c->name = strdup(name);
  if (!c->name)
    return ENOMEM;
  c->node = node;
  c->seq = seq;
  d->nchanges++;
  return 0;
}

/* Link name -> node in directory dir (current entries, recorded). */
static void dir_link(iosim *sim, size_t dir, const char *name, size_t node,
                     uint64_t seq)
{
  sim_node *d = sim->nodes[dir];
  if (set_put(&d->current, name, node) ||
      dir_change_add(d, 1, name, node, seq))
    sim->model_errors++;
}

static void dir_unlink(iosim *sim, size_t dir, const char *name, uint64_t seq)
{
  sim_node *d = sim->nodes[dir];
  size_t i = set_find(&d->current, name);
  if (i == NONE) {
    sim->model_errors++;
    return;
  }
  size_t node = d->current.v[i].node;
  set_remove(&d->current, name);
  if (dir_change_add(d, 0, name, node, seq))
    sim->model_errors++;
}

/* Read a real file into b. */
static int read_whole(int fd, byte_buf *b)
{
  struct stat st;
  if (fstat(fd, &st) < 0)
    return errno;
  b->len = 0;
  int rc = buf_reserve(b, (size_t)st.st_size);
  if (rc)
    return rc;
  size_t done = 0;
  while (done < (size_t)st.st_size) {
    ssize_t n = pread(fd, b->p + done, (size_t)st.st_size - done, (off_t)done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return errno;
    if (n == 0)
      break;
    done += (size_t)n;
  }
  b->len = done;
  return 0;
}

/* Model the real tree at path (all durable) as inode node. */
static int adopt_tree(iosim *sim, size_t node, const char *path, int depth)
{
  if (depth > MAX_DEPTH)
    return ELOOP;
  if (!sim->nodes[node]->is_dir) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return errno;
    int rc = read_whole(fd, &sim->nodes[node]->durable);
    close(fd);
    return rc;
  }
  DIR *dir = opendir(path);
  if (!dir)
    return errno;
  int rc = 0;
  struct dirent *e;
  while (!rc && (e = readdir(dir))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    char child[PATH_MAX];
    snprintf(child, sizeof child, "%s/%s", path, e->d_name);
    struct stat st;
    if (lstat(child, &st) < 0) {
      rc = errno;
      break;
    }
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
      continue;
    size_t c = node_new(sim, S_ISDIR(st.st_mode));
    if (c == NONE) {
      rc = ENOMEM;
      break;
    }
    sim_node *d = sim->nodes[node];
    rc = set_put(&d->current, e->d_name, c);
    if (!rc)
      rc = set_put(&d->durable_set, e->d_name, c);
    if (!rc)
      rc = adopt_tree(sim, c, child, depth + 1);
  }
  closedir(dir);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Descriptors */

static fd_slot *fd_get(iosim *sim, int fd)
{
  if (fd < 0 || (size_t)fd >= sim->nfds || !sim->fds[fd].known)
    return NULL;
  return &sim->fds[fd];
}

static void fd_forget(iosim *sim, int fd)
{
  if (fd < 0 || (size_t)fd >= sim->nfds)
    return;
  free(sim->fds[fd].label);
  memset(&sim->fds[fd], 0, sizeof sim->fds[fd]);
}

static void fd_remember(iosim *sim, int fd, int tracked, size_t node,
                        const char *label)
{
  if ((size_t)fd >= sim->nfds) {
    size_t n = sim->nfds ? sim->nfds : 64;
    while (n <= (size_t)fd)
      n *= 2;
    fd_slot *v = realloc(sim->fds, n * sizeof *v);
    if (!v) {
      sim->model_errors++;
      return;
    }
    memset(v + sim->nfds, 0, (n - sim->nfds) * sizeof *v);
    sim->fds = v;
    sim->nfds = n;
  }
  fd_forget(sim, fd);
  sim->fds[fd].known = 1;
  sim->fds[fd].tracked = tracked;
  sim->fds[fd].node = node;
  sim->fds[fd].label = strdup(label);
}

static const char *fd_label(iosim *sim, int fd, char *tmp, size_t size)
{
  fd_slot *s = fd_get(sim, fd);
  if (s && s->label)
    return s->label;
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n > 0) {
    path[n] = 0;
    size_t rl = sim->root ? strlen(sim->root) : 0;
    if (rl && !strncmp(path, sim->root, rl) && (path[rl] == '/' || !path[rl]))
      copy_str(tmp, size, path[rl] ? path + rl + 1 : ".");
    else
      copy_str(tmp, size, path);
  } else {
    snprintf(tmp, size, "fd %d", fd);
  }
  return tmp;
}

/* ---------------------------------------------------------------------- */
/* Name resolution */

/* Adopt a directory that exists on disk but not in the model (made behind
 * the simulator's back, e.g. with mkdir(2) directly) as a durable entry
 * name of directory inode dir. Returns its inode or NONE. */
static size_t adopt_dir(iosim *sim, size_t dir, const char *name,
                        const char *abs_path)
{
  struct stat st;
  if (!abs_path || lstat(abs_path, &st) < 0 || !S_ISDIR(st.st_mode))
    return NONE;
  size_t node = node_new(sim, 1);
  if (node == NONE)
    return NONE;
  sim_node *d = sim->nodes[dir];
  if (set_put(&d->current, name, node) || set_put(&d->durable_set, name, node) ||
      adopt_tree(sim, node, abs_path, 0)) {
    sim->model_errors++;
    return NONE;
  }
  sim->adopted++;
  return node;
}

/* Walk the components of rel (relative, no "..") from inode start. With
 * abs_start (the real path of start), a directory missing from the model
 * but present on disk is adopted. */
static void walk(iosim *sim, size_t start, const char *rel,
                 const char *abs_start, resolved *r)
{
  char buf[PATH_MAX];
  copy_str(buf, sizeof buf, rel);
  char *comps[PATH_MAX / 2];
  size_t n = 0;
  char *save = NULL;
  for (char *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save))
    if (strcmp(t, "."))
      comps[n++] = t;
  if (n == 0) {
    /* The start directory itself. */
    r->parent = NONE;
    r->target = start;
    r->leaf[0] = 0;
    return;
  }
  char real[PATH_MAX];
  copy_str(real, sizeof real, abs_start ? abs_start : "");
  size_t cur = start;
  for (size_t i = 0; i + 1 < n; i++) {
    sim_node *d = sim->nodes[cur];
    size_t len = strlen(real);
    snprintf(real + len, sizeof real - len, "/%s", comps[i]);
    size_t k = d->is_dir ? set_find(&d->current, comps[i]) : NONE;
    size_t next = k == NONE ? NONE : d->current.v[k].node;
    if (next == NONE && d->is_dir)
      next = adopt_dir(sim, cur, comps[i], abs_start ? real : NULL);
    if (next == NONE || !sim->nodes[next]->is_dir) {
      r->tracked = 0; /* the real call fails with ENOENT/ENOTDIR */
      return;
    }
    cur = next;
  }
  copy_str(r->leaf, sizeof r->leaf, comps[n - 1]);
  r->parent = cur;
  sim_node *d = sim->nodes[cur];
  size_t k = set_find(&d->current, r->leaf);
  r->target = k == NONE ? NONE : d->current.v[k].node;
}

/* Lexically normalise an absolute path in place ("." and ".." removed). */
static void normalise(char *path)
{
  char out[PATH_MAX];
  size_t len = 0;
  out[0] = 0;
  char buf[PATH_MAX];
  snprintf(buf, sizeof buf, "%s", path);
  char *save = NULL;
  for (char *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
    if (!strcmp(t, "."))
      continue;
    if (!strcmp(t, "..")) {
      while (len > 0 && out[len - 1] != '/')
        len--;
      if (len > 0)
        len--;
      out[len] = 0;
      continue;
    }
    int w = snprintf(out + len, sizeof out - len, "/%s", t);
    if (w < 0 || (size_t)w >= sizeof out - len)
      break;
    len += (size_t)w;
  }
  snprintf(path, PATH_MAX, "%s", len ? out : "/");
}

static void resolve(iosim *sim, int dirfd, const char *name, resolved *r)
{
  memset(r, 0, sizeof *r);
  r->parent = NONE;
  r->target = NONE;
  fd_slot *s = fd_get(sim, dirfd);
  if (name[0] != '/' && dirfd != AT_FDCWD && s && s->tracked &&
      !strstr(name, "..")) {
    r->tracked = 1;
    path_join(r->label, sizeof r->label, s->label, name);
    walk(sim, s->node, name, NULL, r);
    return;
  }
  char abs[PATH_MAX];
  if (name[0] == '/') {
    snprintf(abs, sizeof abs, "%s", name);
  } else {
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
      if (!getcwd(base, sizeof base))
        base[0] = 0;
    } else if (s && s->tracked && sim->root) {
      path_join(base, sizeof base, sim->root, s->label);
    } else {
      char link[64];
      snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
      ssize_t n = readlink(link, base, sizeof base - 1);
      base[n < 0 ? 0 : n] = 0;
    }
    char joined[PATH_MAX * 2];
    snprintf(joined, sizeof joined, "%s/%s", base, name);
    copy_str(abs, sizeof abs, joined);
  }
  normalise(abs);
  snprintf(r->label, sizeof r->label, "%s", abs);
  if (!sim->root)
    return;
  size_t rl = strlen(sim->root);
  if (strncmp(abs, sim->root, rl) || (abs[rl] != 0 && abs[rl] != '/'))
    return;
  const char *rel = abs + rl;
  while (*rel == '/')
    rel++;
  snprintf(r->label, sizeof r->label, "%s", rel[0] ? rel : ".");
  r->tracked = 1;
  walk(sim, 0, rel, sim->root, r);
}

/* The descriptor fd as the model sees it. A descriptor the simulator did
 * not open (the engine opened it with open(2) directly) is looked up
 * through /proc/self/fd each time, never cached: its number may be reused
 * behind the simulator's back. */
static int fd_resolve(iosim *sim, int fd, fd_slot *out)
{
  fd_slot *s = fd_get(sim, fd);
  if (s) {
    *out = *s;
    return s->tracked;
  }
  memset(out, 0, sizeof *out);
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0 || path[0] != '/')
    return 0;
  path[n] = 0;
  resolved r;
  resolve(sim, AT_FDCWD, path, &r);
  if (!r.tracked || r.target == NONE)
    return 0;
  out->known = 1;
  out->tracked = 1;
  out->node = r.target;
  return 1;
}

/* ---------------------------------------------------------------------- */
/* The op prologue: count, trace, hook, kill, faults. Mutex held. */

static op_verdict begin_op(iosim *sim, loom_io_op op, const char *path)
{
  op_verdict v = {0, 0};
  uint64_t k = sim->count++;
  uint64_t nth = sim->count_op[op]++;
  if (sim->ntrace < TRACE_LIMIT) {
    if (sim->ntrace == sim->trace_cap) {
      size_t cap = sim->trace_cap ? sim->trace_cap * 2 : 256;
      trace_rec *t = realloc(sim->trace, cap * sizeof *t);
      if (t) {
        sim->trace = t;
        sim->trace_cap = cap;
      }
    }
    if (sim->ntrace < sim->trace_cap) {
      sim->trace[sim->ntrace].op = op;
      sim->trace[sim->ntrace].path = strdup(path);
      sim->ntrace++;
    }
  }
  if (sim->hook)
    sim->hook(sim->hook_ctx, sim, k, op);
  if (k == sim->kill_at)
    raise(SIGKILL);
  for (size_t i = 0; i < sim->nfaults; i++) {
    const iosim_fault *f = &sim->faults[i];
    uint64_t at = f->by_type ? nth : k;
    if (f->by_type && f->op != op)
      continue;
    if (f->path) {
      size_t pl = strlen(path), sl = strlen(sim->fault_paths[i]);
      if (pl < sl || strcmp(path + pl - sl, sim->fault_paths[i]))
        continue;
      at = sim->fault_seen[i]++;
    }
    if (at == f->index || (f->sticky && at > f->index)) {
      v.err = f->err;
      v.short_write = f->kind == IOSIM_SHORT_WRITE && op == LOOM_IO_PWRITE;
      if (sim->injected++ == 0)
        sim->first_fault = k;
      if (sim->fault_fired[i] == UINT64_MAX)
        sim->fault_fired[i] = k;
      break;
    }
  }
  return v;
}

/* ---------------------------------------------------------------------- */
/* The loom_io functions */

static int sim_open(void *ctx, int dirfd, const char *name, int flags,
                    mode_t mode)
{
  iosim *sim = ctx;
  pthread_mutex_lock(&sim->mutex);
  resolved r;
  resolve(sim, dirfd, name, &r);
  op_verdict v = begin_op(sim, LOOM_IO_OPEN, r.label);
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  int fd;
  do
    fd = openat(dirfd, name, flags | O_CLOEXEC, mode);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int e = errno;
    pthread_mutex_unlock(&sim->mutex);
    return -e;
  }
  size_t node = NONE;
  if (r.tracked) {
    if (r.parent == NONE) {
      node = r.target;
    } else if (r.target != NONE) {
      node = r.target;
      if ((flags & O_TRUNC) && !sim->nodes[node]->is_dir &&
          file_op_add(sim->nodes[node], 1, 0, NULL, 0))
        sim->model_errors++;
    } else {
      /* Not in the model: created by this call, or made behind the
       * simulator's back (then adopted as durable). */
      struct stat st;
      int known = fstat(fd, &st) == 0;
      int is_dir = known && S_ISDIR(st.st_mode);
      if (is_dir) {
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
        node = adopt_dir(sim, r.parent, r.leaf, self);
      } else if (!(flags & O_CREAT) || (known && st.st_size > 0)) {
        node = node_new(sim, 0);
        sim_node *d = sim->nodes[r.parent];
        if (node == NONE || read_whole(fd, &sim->nodes[node]->durable) ||
            set_put(&d->current, r.leaf, node) ||
            set_put(&d->durable_set, r.leaf, node))
          sim->model_errors++;
        else
          sim->adopted++;
      } else {
        node = node_new(sim, 0);
        if (node == NONE)
          sim->model_errors++;
        else
          dir_link(sim, r.parent, r.leaf, node, sim->change_seq++);
      }
    }
  }
  fd_remember(sim, fd, r.tracked && node != NONE, node, r.label);
  pthread_mutex_unlock(&sim->mutex);
  return fd;
}

static ssize_t sim_pread(void *ctx, int fd, void *buf, size_t len, off_t off)
{
  iosim *sim = ctx;
  char tmp[PATH_MAX];
  pthread_mutex_lock(&sim->mutex);
  op_verdict v = begin_op(sim, LOOM_IO_PREAD, fd_label(sim, fd, tmp, sizeof tmp));
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      pthread_mutex_unlock(&sim->mutex);
      return -e;
    }
    if (n == 0)
      break;
    done += (size_t)n;
  }
  pthread_mutex_unlock(&sim->mutex);
  return (ssize_t)done;
}

/* Write buf for real, completing short transfers; the bytes written are
 * recorded in the model even when it fails midway. Returns 0 or errno. */
static int real_write(iosim *sim, int fd, const void *buf, size_t len,
                      off_t off)
{
  size_t done = 0;
  int err = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, (const char *)buf + done, len - done,
                       off + (off_t)done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += (size_t)n;
  }
  fd_slot s;
  if (done && fd_resolve(sim, fd, &s) && !sim->nodes[s.node]->is_dir &&
      file_op_add(sim->nodes[s.node], 0, (uint64_t)off, buf, done))
    sim->model_errors++;
  return err;
}

static ssize_t sim_pwrite(void *ctx, int fd, const void *buf, size_t len,
                          off_t off)
{
  iosim *sim = ctx;
  char tmp[PATH_MAX];
  pthread_mutex_lock(&sim->mutex);
  op_verdict v = begin_op(sim, LOOM_IO_PWRITE, fd_label(sim, fd, tmp, sizeof tmp));
  if (v.err) {
    if (v.short_write)
      real_write(sim, fd, buf, len / 2, off);
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  int err = real_write(sim, fd, buf, len, off);
  pthread_mutex_unlock(&sim->mutex);
  return err ? -err : (ssize_t)len;
}

/* LOOM_IOSIM_PWRITEV: the buffers gathered and written as one pwrite (one
 * op, faulted, killed before and torn by a power cut as one write), so
 * that the suites run the store's one-write record path. */
static ssize_t sim_pwritev(void *ctx, int fd, const struct iovec *iov,
                           int iovcnt, off_t off)
{
  size_t len = 0;
  for (int i = 0; i < iovcnt; i++)
    len += iov[i].iov_len;
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf)
    return -ENOMEM;
  for (size_t i = 0, at = 0; i < (size_t)iovcnt; at += iov[i++].iov_len)
    memcpy(buf + at, iov[i].iov_base, iov[i].iov_len);
  ssize_t n = sim_pwrite(ctx, fd, buf, len, off);
  free(buf);
  return n;
}

static int sim_fsync(void *ctx, int fd)
{
  iosim *sim = ctx;
  char tmp[PATH_MAX];
  pthread_mutex_lock(&sim->mutex);
  const char *label = fd_label(sim, fd, tmp, sizeof tmp);
  op_verdict v = begin_op(sim, LOOM_IO_FSYNC, label);
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  if (sim->count_op[LOOM_IO_FSYNC] - 1 == sim->drop_fsync) {
    /* The mutation: this fsync does nothing at all. */
    if (!sim->drop_reached) {
      sim->drop_reached = 1;
      sim->drop_path = strdup(label);
    }
    pthread_mutex_unlock(&sim->mutex);
    return 0;
  }
  if (fsync(fd) < 0) {
    int e = errno;
    pthread_mutex_unlock(&sim->mutex);
    return -e;
  }
  fd_slot s;
  if (fd_resolve(sim, fd, &s)) {
    sim_node *n = sim->nodes[s.node];
    if (n->is_dir) {
      if (set_copy(&n->durable_set, &n->current))
        sim->model_errors++;
      dir_changes_clear(n);
    } else {
      for (size_t i = 0; i < n->nops; i++)
        if (file_op_apply(&n->durable, &n->ops[i]))
          sim->model_errors++;
      file_ops_clear(n);
    }
  }
  pthread_mutex_unlock(&sim->mutex);
  return 0;
}

static int sim_ftruncate(void *ctx, int fd, off_t len)
{
  iosim *sim = ctx;
  char tmp[PATH_MAX];
  pthread_mutex_lock(&sim->mutex);
  op_verdict v = begin_op(sim, LOOM_IO_FTRUNCATE,
                          fd_label(sim, fd, tmp, sizeof tmp));
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  int rc;
  do
    rc = ftruncate(fd, len);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int e = errno;
    pthread_mutex_unlock(&sim->mutex);
    return -e;
  }
  fd_slot s;
  if (fd_resolve(sim, fd, &s) && !sim->nodes[s.node]->is_dir &&
      file_op_add(sim->nodes[s.node], 1, (uint64_t)len, NULL, 0))
    sim->model_errors++;
  pthread_mutex_unlock(&sim->mutex);
  return 0;
}

static int sim_rename(void *ctx, int olddirfd, const char *oldname,
                      int newdirfd, const char *newname)
{
  iosim *sim = ctx;
  pthread_mutex_lock(&sim->mutex);
  resolved from, to;
  resolve(sim, olddirfd, oldname, &from);
  resolve(sim, newdirfd, newname, &to);
  char label[PATH_MAX * 2 + 8];
  snprintf(label, sizeof label, "%s -> %s", from.label, to.label);
  op_verdict v = begin_op(sim, LOOM_IO_RENAME, label);
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  if (renameat(olddirfd, oldname, newdirfd, newname) < 0) {
    int e = errno;
    pthread_mutex_unlock(&sim->mutex);
    return -e;
  }
  uint64_t seq = sim->change_seq++;
  size_t node = NONE;
  if (from.tracked && from.parent != NONE && from.target != NONE) {
    node = from.target;
    dir_unlink(sim, from.parent, from.leaf, seq);
  } else if (from.tracked) {
    sim->model_errors++;
  }
  if (to.tracked && to.parent != NONE) {
    if (node == NONE) {
      /* Moved in from outside the tree: adopt it as it is. */
      char abs[PATH_MAX * 2];
      snprintf(abs, sizeof abs, "%s/%s", sim->root, to.label);
      struct stat st;
      if (stat(abs, &st) == 0 && (node = node_new(sim, S_ISDIR(st.st_mode))) != NONE &&
          adopt_tree(sim, node, abs, 0))
        sim->model_errors++;
    }
    if (node != NONE)
      dir_link(sim, to.parent, to.leaf, node, seq);
    else
      sim->model_errors++;
  }
  pthread_mutex_unlock(&sim->mutex);
  return 0;
}

static int sim_unlink(void *ctx, int dirfd, const char *name, int flags)
{
  iosim *sim = ctx;
  pthread_mutex_lock(&sim->mutex);
  resolved r;
  resolve(sim, dirfd, name, &r);
  op_verdict v = begin_op(sim, LOOM_IO_UNLINK, r.label);
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  if (unlinkat(dirfd, name, flags) < 0) {
    int e = errno;
    pthread_mutex_unlock(&sim->mutex);
    return -e;
  }
  if (r.tracked && r.parent != NONE)
    dir_unlink(sim, r.parent, r.leaf, sim->change_seq++);
  pthread_mutex_unlock(&sim->mutex);
  return 0;
}

static int sim_close(void *ctx, int fd)
{
  iosim *sim = ctx;
  char tmp[PATH_MAX];
  pthread_mutex_lock(&sim->mutex);
  op_verdict v = begin_op(sim, LOOM_IO_CLOSE, fd_label(sim, fd, tmp, sizeof tmp));
  if (v.err) {
    /* Linux releases the descriptor even when close fails. */
    close(fd);
    fd_forget(sim, fd);
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  int rc = close(fd);
  int e = errno;
  fd_forget(sim, fd);
  pthread_mutex_unlock(&sim->mutex);
  return rc < 0 && e != EINTR ? -e : 0;
}

static int sim_mkdir(void *ctx, int dirfd, const char *name, mode_t mode)
{
  iosim *sim = ctx;
  pthread_mutex_lock(&sim->mutex);
  resolved r;
  resolve(sim, dirfd, name, &r);
  op_verdict v = begin_op(sim, LOOM_IO_MKDIR, r.label);
  if (v.err) {
    pthread_mutex_unlock(&sim->mutex);
    return -v.err;
  }
  if (mkdirat(dirfd, name, mode) < 0) {
    int e = errno;
    pthread_mutex_unlock(&sim->mutex);
    return -e;
  }
  if (r.tracked && r.parent != NONE) {
    size_t node = node_new(sim, 1);
    if (node == NONE)
      sim->model_errors++;
    else
      dir_link(sim, r.parent, r.leaf, node, sim->change_seq++);
  }
  pthread_mutex_unlock(&sim->mutex);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Creation and queries */

int iosim_create(const char *root, iosim **out)
{
  iosim *sim = calloc(1, sizeof *sim);
  if (!sim)
    return ENOMEM;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&sim->mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  sim->io = (loom_io){
    .ctx = sim,
    .open = sim_open,
    .pread = sim_pread,
    .pwrite = sim_pwrite,
    .fsync = sim_fsync,
    .ftruncate = sim_ftruncate,
    .rename = sim_rename,
    .unlink = sim_unlink,
    .close = sim_close,
    .mkdir = sim_mkdir,
  };
  sim->kill_at = UINT64_MAX;
  sim->first_fault = UINT64_MAX;
  sim->drop_fsync = UINT64_MAX;
  const char *vec = getenv("LOOM_IOSIM_PWRITEV");
  if (vec && *vec && strcmp(vec, "0"))
    sim->io.pwritev = sim_pwritev;
  const char *drop = getenv("LOOM_IOSIM_DROP_FSYNC");
  if (drop && *drop) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(drop, &end, 10);
    if (!errno && !*end)
      sim->drop_fsync = n;
  }
  if (root) {
    char real[PATH_MAX];
    if (!realpath(root, real)) {
      int e = errno;
      iosim_destroy(sim);
      return e;
    }
    sim->root = strdup(real);
    size_t node = sim->root ? node_new(sim, 1) : NONE;
    int rc = node == NONE ? ENOMEM : adopt_tree(sim, node, real, 0);
    if (rc) {
      iosim_destroy(sim);
      return rc;
    }
  }
  *out = sim;
  return 0;
}

void iosim_destroy(iosim *sim)
{
  if (!sim)
    return;
  for (size_t i = 0; i < sim->nnodes; i++)
    node_free(sim->nodes[i]);
  free(sim->nodes);
  for (size_t i = 0; i < sim->nfds; i++)
    free(sim->fds[i].label);
  free(sim->fds);
  for (size_t i = 0; i < sim->ntrace; i++)
    free(sim->trace[i].path);
  free(sim->trace);
  free(sim->root);
  free(sim->drop_path);
  pthread_mutex_destroy(&sim->mutex);
  free(sim);
}

const loom_io *iosim_io(iosim *sim) { return &sim->io; }

uint64_t iosim_count(iosim *sim)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = sim->count;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

uint64_t iosim_count_op(iosim *sim, loom_io_op op)
{
  if ((unsigned)op >= LOOM_IO_OP_COUNT)
    return 0;
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = sim->count_op[op];
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

int iosim_trace_op(iosim *sim, uint64_t k, loom_io_op *op, char *path,
                   size_t path_size)
{
  pthread_mutex_lock(&sim->mutex);
  int rc = ERANGE;
  if (k < sim->ntrace) {
    if (op)
      *op = sim->trace[k].op;
    if (path && path_size)
      snprintf(path, path_size, "%s", sim->trace[k].path ? sim->trace[k].path : "?");
    rc = 0;
  }
  pthread_mutex_unlock(&sim->mutex);
  return rc;
}

int iosim_fault_add(iosim *sim, const iosim_fault *fault)
{
  if (!fault || fault->err <= 0 || (unsigned)fault->op >= LOOM_IO_OP_COUNT)
    return EINVAL;
  pthread_mutex_lock(&sim->mutex);
  int rc = ENOSPC;
  if (fault->path && strlen(fault->path) >= sizeof sim->fault_paths[0]) {
    rc = EINVAL;
  } else if (sim->nfaults < MAX_FAULTS) {
    size_t i = sim->nfaults++;
    sim->faults[i] = *fault;
    sim->fault_seen[i] = 0;
    sim->fault_fired[i] = UINT64_MAX;
    if (fault->path) {
      copy_str(sim->fault_paths[i], sizeof sim->fault_paths[i], fault->path);
      sim->faults[i].path = sim->fault_paths[i];
    }
    rc = 0;
  }
  pthread_mutex_unlock(&sim->mutex);
  return rc;
}

int iosim_fail_at(iosim *sim, uint64_t k, int err)
{
  iosim_fault f = {.kind = IOSIM_FAIL, .err = err, .index = k};
  return iosim_fault_add(sim, &f);
}

int iosim_short_write_at(iosim *sim, uint64_t k, int err)
{
  iosim_fault f = {.kind = IOSIM_SHORT_WRITE, .err = err, .index = k};
  return iosim_fault_add(sim, &f);
}

uint64_t iosim_fault_fired(iosim *sim, size_t n)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t k = n < sim->nfaults ? sim->fault_fired[n] : UINT64_MAX;
  pthread_mutex_unlock(&sim->mutex);
  return k;
}

uint64_t iosim_faults_injected(iosim *sim)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = sim->injected;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

uint64_t iosim_first_fault(iosim *sim)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = sim->first_fault;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

void iosim_kill_before(iosim *sim, uint64_t k)
{
  pthread_mutex_lock(&sim->mutex);
  sim->kill_at = k;
  pthread_mutex_unlock(&sim->mutex);
}

void iosim_hook_set(iosim *sim, iosim_hook_fn hook, void *ctx)
{
  pthread_mutex_lock(&sim->mutex);
  sim->hook = hook;
  sim->hook_ctx = ctx;
  pthread_mutex_unlock(&sim->mutex);
}

uint64_t iosim_model_errors(iosim *sim)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = sim->model_errors;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

uint64_t iosim_adopted(iosim *sim)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = sim->adopted;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

uint64_t iosim_unsynced(iosim *sim)
{
  pthread_mutex_lock(&sim->mutex);
  uint64_t n = 0;
  for (size_t i = 0; i < sim->nnodes; i++)
    n += sim->nodes[i]->nops + sim->nodes[i]->nchanges;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

void iosim_drop_fsync_set(iosim *sim, uint64_t ordinal)
{
  pthread_mutex_lock(&sim->mutex);
  sim->drop_fsync = ordinal;
  pthread_mutex_unlock(&sim->mutex);
}

uint64_t iosim_dropped_fsync(iosim *sim, int *reached, char *path,
                             size_t path_size)
{
  pthread_mutex_lock(&sim->mutex);
  if (reached)
    *reached = sim->drop_reached;
  if (path && path_size)
    snprintf(path, path_size, "%s", sim->drop_path ? sim->drop_path : "");
  uint64_t n = sim->drop_fsync;
  pthread_mutex_unlock(&sim->mutex);
  return n;
}

/* ---------------------------------------------------------------------- */
/* Power cut */

typedef struct cut {
  iosim *sim;
  uint64_t seed;
  unsigned mode;
  uint64_t dir_cutoff; /* directory changes with seq below it are kept */
  byte_buf content;
} cut;

/* The bytes of file inode id after the cut, into c->content. */
static int cut_file(cut *c, size_t id)
{
  sim_node *n = c->sim->nodes[id];
  int rc = buf_copy(&c->content, &n->durable);
  unsigned mode = c->mode & IOSIM_CUT_MODE_MASK;
  uint64_t sector = mode == IOSIM_CUT_RANDOM_4K ? 4096 : 512;
  for (size_t i = 0; !rc && i < n->nops; i++) {
    const file_op *op = &n->ops[i];
    uint64_t h = choice(c->seed, id, i, UINT64_MAX);
    int apply;
    switch ((iosim_cut_mode)mode) {
    case IOSIM_CUT_DROP: apply = 0; break;
    case IOSIM_CUT_KEEP: apply = 1; break;
    case IOSIM_CUT_RANDOM_512:
    case IOSIM_CUT_RANDOM_4K:
    default:
      apply = op->truncate ? (int)(h & 1) : (int)(h % 3); /* 2: torn */
      break;
    }
    if (apply == 1) {
      rc = file_op_apply(&c->content, op);
    } else if (apply == 2) {
      uint64_t pos = op->off, end = op->off + op->len;
      while (!rc && pos < end) {
        uint64_t unit_end = (pos / sector + 1) * sector;
        if (unit_end > end)
          unit_end = end;
        if (choice(c->seed, id, i, pos) & 1)
          rc = buf_write(&c->content, pos, op->data + (pos - op->off),
                         (size_t)(unit_end - pos));
        pos = unit_end;
      }
    }
  }
  return rc;
}

/* Write b as a new file at path; all-zero 4 KiB blocks are left as holes
 * (they read back as zeros, and images grow by zero pages). */
static int write_file(const char *path, const byte_buf *b)
{
  static const uint8_t zeros[4096];
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return errno;
  size_t done = 0;
  int rc = 0;
  while (done < b->len) {
    size_t len = b->len - done < sizeof zeros ? b->len - done : sizeof zeros;
    if (memcmp(b->p + done, zeros, len) != 0) {
      ssize_t n = pwrite(fd, b->p + done, len, (off_t)done);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        rc = n < 0 ? errno : EIO;
        break;
      }
      len = (size_t)n;
    }
    done += len;
  }
  if (!rc && ftruncate(fd, (off_t)b->len) < 0)
    rc = errno;
  if (close(fd) < 0 && !rc)
    rc = errno;
  return rc;
}

static int cut_dir(cut *c, size_t id, const char *path, int depth)
{
  if (depth > MAX_DEPTH)
    return ELOOP;
  sim_node *d = c->sim->nodes[id];
  entry_set entries = {0};
  int rc = set_copy(&entries, &d->durable_set);
  for (size_t i = 0; !rc && i < d->nchanges; i++) {
    const dir_change *ch = &d->changes[i];
    if (ch->seq >= c->dir_cutoff)
      continue;
    if (ch->add) {
      rc = set_put(&entries, ch->name, ch->node);
    } else {
      size_t k = set_find(&entries, ch->name);
      if (k != NONE && entries.v[k].node == ch->node)
        set_remove(&entries, ch->name);
    }
  }
  for (size_t i = 0; !rc && i < entries.n; i++) {
    char child[PATH_MAX];
    snprintf(child, sizeof child, "%s/%s", path, entries.v[i].name);
    size_t node = entries.v[i].node;
    if (c->sim->nodes[node]->is_dir) {
      if (mkdir(child, 0755) < 0)
        rc = errno;
      else
        rc = cut_dir(c, node, child, depth + 1);
    } else {
      rc = cut_file(c, node);
      if (!rc)
        rc = write_file(child, &c->content);
    }
  }
  set_free(&entries);
  return rc;
}

int iosim_powercut(iosim *sim, uint64_t seed, const char *outdir,
                   unsigned mode)
{
  if ((mode & IOSIM_CUT_MODE_MASK) > IOSIM_CUT_RANDOM_4K)
    return EINVAL;
  pthread_mutex_lock(&sim->mutex);
  if (!sim->root) {
    pthread_mutex_unlock(&sim->mutex);
    return EINVAL;
  }
  cut c = {.sim = sim, .seed = seed, .mode = mode, .dir_cutoff = 0};
  if (mode & IOSIM_CUT_DIR_RANDOM) {
    /* Keep a random in-order prefix of the unsynced directory changes. */
    uint64_t lo = UINT64_MAX;
    for (size_t i = 0; i < sim->nnodes; i++)
      for (size_t j = 0; j < sim->nodes[i]->nchanges; j++)
        if (sim->nodes[i]->changes[j].seq < lo)
          lo = sim->nodes[i]->changes[j].seq;
    if (lo != UINT64_MAX)
      c.dir_cutoff = lo + choice(seed, UINT64_MAX, 0, 0) %
                              (sim->change_seq - lo + 1);
  }
  int rc = 0;
  if (mkdir(outdir, 0755) < 0)
    rc = errno;
  else
    rc = cut_dir(&c, 0, outdir, 0);
  free(c.content.p);
  pthread_mutex_unlock(&sim->mutex);
  return rc;
}
