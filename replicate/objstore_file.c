/*
 * objstore_file.c: the file:// backend of objstore.h: one file per key
 * under a directory that must exist (as a bucket must), subdirectories
 * made as keys need them.
 *
 * DURABILITY
 *
 *   P1 put writes KEY~tmp.PID.N beside the target ('~' is not a key
 *      character, so a listing never shows a temporary file), fsyncs it,
 *   P2 then renames it over KEY, or, with OBJSTORE_PUT_IF_ABSENT, link()s
 *      it to KEY (link fails with EEXIST where an object is already, so two
 *      writers cannot both succeed) and unlinks the temporary name,
 *   P3 then fsyncs the key's directory: without it the new name may be gone
 *      after a power loss although put returned 0.
 *   A directory made for a key is fsynced into its parent the same way.
 *   delete unlinks and fsyncs the directory; empty directories are left.
 *
 * A temporary file left by a crash between P1 and P2 is never listed nor
 * read; it costs space until someone removes it.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "objstore_internal.h"
#include "replicate.h"

typedef struct file_store {
  struct objstore base; /* first: the objstore the caller holds */
  char *dir;            /* absolute, without a trailing '/' */
} file_store;

static atomic_uint tmp_counter;

static const char *store_dir(objstore *s) { return ((file_store *)s)->dir; }

/* "DIR/KEY" in a malloc'd buffer, or NULL. */
static char *key_path(objstore *s, const char *key)
{
  char *path = NULL;
  if (asprintf(&path, "%s/%s", store_dir(s), key) < 0)
    return NULL;
  return path;
}

/* The store's directory must exist, as an S3 bucket must. */
static int check_root(objstore *s, const char *op, const char *key)
{
  struct stat st;
  if (stat(store_dir(s), &st) == 0 && S_ISDIR(st.st_mode))
    return 0;
  return objstore_fail(s, REPLICATE_ESTORE_MISSING,
                       "%s %s/%s: no such directory %s", op, s->url, key,
                       store_dir(s));
}

static int fsync_dir(const char *dir)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  int rc = fsync(fd) == 0 ? 0 : errno;
  close(fd);
  return rc;
}

/* Makes every directory between the store's root and path's last '/',
 * fsyncing each new one into its parent. path is modified and restored. */
static int make_parents(objstore *s, char *path)
{
  size_t root = strlen(store_dir(s));
  for (char *p = path + root + 1; (p = strchr(p, '/')) != NULL; p++) {
    *p = '\0';
    int rc = 0;
    if (mkdir(path, 0755) == 0) {
      char *slash = strrchr(path, '/');
      *slash = '\0';
      rc = fsync_dir(path);
      *slash = '/';
    } else if (errno != EEXIST) {
      rc = errno;
    }
    *p = '/';
    if (rc != 0)
      return rc;
  }
  return 0;
}

static int write_all(int fd, const void *data, size_t len)
{
  const char *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return errno;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* P1: the temporary file, written and fsynced. */
static int write_temp(const char *tmp, const void *data, size_t len)
{
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return errno;
  int rc = write_all(fd, data, len);
  if (rc == 0 && fsync(fd) != 0)
    rc = errno;
  if (close(fd) != 0 && rc == 0)
    rc = errno;
  if (rc != 0)
    unlink(tmp);
  return rc;
}

/* P2: the temporary name becomes the key's. */
static int publish(const char *tmp, const char *path, unsigned flags)
{
  if (!(flags & OBJSTORE_PUT_IF_ABSENT))
    return rename(tmp, path) == 0 ? 0 : errno;
  int rc = link(tmp, path) == 0 ? 0 : errno;
  unlink(tmp);
  return rc == EEXIST ? REPLICATE_ESTORE_EXISTS : rc;
}

static int file_put(objstore *s, const char *key, const void *data, size_t len,
                    unsigned flags)
{
  s->stats.puts++;
  int rc = check_root(s, "PUT", key);
  if (rc != 0)
    return rc;
  char *path = key_path(s, key), *tmp = NULL;
  if (path == NULL || asprintf(&tmp, "%s~tmp.%ld.%u", path, (long)getpid(),
                               atomic_fetch_add(&tmp_counter, 1)) < 0) {
    free(path);
    return ENOMEM;
  }
  const char *step = "mkdir";
  rc = make_parents(s, path);
  if (rc == 0)
    step = "write", rc = write_temp(tmp, data, len);
  if (rc == 0)
    step = "publish", rc = publish(tmp, path, flags);
  if (rc == 0) {
    char *slash = strrchr(path, '/');
    *slash = '\0';
    step = "fsync directory", rc = fsync_dir(path); /* P3 */
  }
  free(path);
  free(tmp);
  if (rc == REPLICATE_ESTORE_EXISTS)
    return objstore_fail(s, rc, "PUT %s/%s: the object exists", s->url, key);
  if (rc != 0)
    return objstore_fail(s, rc, "PUT %s/%s: %s: %s", s->url, key, step,
                         strerror(rc));
  s->stats.bytes_up += len;
  return 0;
}

static int read_all(int fd, char *buf, size_t len)
{
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return errno;
    if (n == 0)
      return EIO; /* shrank while read: not the whole object */
    got += (size_t)n;
  }
  return 0;
}

static int file_get(objstore *s, const char *key, size_t max_len, void **data,
                    size_t *len)
{
  s->stats.gets++;
  int rc = check_root(s, "GET", key);
  if (rc != 0)
    return rc;
  char *path = key_path(s, key);
  if (path == NULL)
    return ENOMEM;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  free(path);
  if (fd < 0 && errno == ENOENT)
    return objstore_fail(s, REPLICATE_ESTORE_MISSING, "GET %s/%s: no such key",
                         s->url, key);
  if (fd < 0)
    return objstore_fail(s, errno, "GET %s/%s: %s", s->url, key,
                         strerror(errno));
  struct stat st;
  char *buf = NULL;
  rc = fstat(fd, &st) == 0 ? 0 : errno;
  if (rc == 0 && max_len != 0 && (uint64_t)st.st_size > max_len) {
    close(fd);
    return objstore_fail(s, REPLICATE_ESTORE,
                         "GET %s/%s: %lld bytes, more than the %zu allowed",
                         s->url, key, (long long)st.st_size, max_len);
  }
  if (rc == 0 && (buf = malloc((size_t)st.st_size + 1)) == NULL)
    rc = ENOMEM;
  if (rc == 0)
    rc = read_all(fd, buf, (size_t)st.st_size);
  close(fd);
  if (rc != 0) {
    free(buf);
    return objstore_fail(s, rc, "GET %s/%s: %s", s->url, key, strerror(rc));
  }
  *data = buf;
  *len = (size_t)st.st_size;
  s->stats.bytes_down += *len;
  return 0;
}

static int file_get_range(objstore *s, const char *key, uint64_t offset,
                          size_t len, void **data, size_t *got)
{
  s->stats.gets++;
  int rc = check_root(s, "GET", key);
  char *path = rc == 0 ? key_path(s, key) : NULL;
  if (rc == 0 && path == NULL)
    return ENOMEM;
  int fd = rc == 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
  free(path);
  if (rc != 0)
    return rc;
  if (fd < 0)
    return objstore_fail(s, errno == ENOENT ? REPLICATE_ESTORE_MISSING : errno,
                         "GET %s/%s: %s", s->url, key, strerror(errno));
  char *buf = malloc(len);
  size_t n = 0;
  rc = buf ? 0 : ENOMEM;
  while (rc == 0 && n < len) {
    ssize_t r = pread(fd, buf + n, len - n, (off_t)(offset + n));
    if (r < 0 && errno != EINTR)
      rc = errno;
    else if (r == 0)
      break;
    else if (r > 0)
      n += (size_t)r;
  }
  close(fd);
  if (rc == 0 && n == 0)
    rc = objstore_fail(s, REPLICATE_ESTORE,
                       "GET %s/%s: nothing at offset %" PRIu64, s->url, key,
                       offset);
  else if (rc != 0)
    objstore_fail(s, rc, "GET %s/%s: %s", s->url, key, strerror(rc));
  if (rc != 0) {
    free(buf);
    return rc;
  }
  *data = buf;
  *got = n;
  s->stats.bytes_down += n;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Listing: the keys under a prefix, gathered recursively, then sorted. */

typedef struct listed {
  char *key;
  uint64_t size;
} listed;

typedef struct listing {
  listed *items;
  size_t n, cap;
} listing;

static int listing_add(listing *l, const char *key, uint64_t size)
{
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    listed *items = realloc(l->items, cap * sizeof *items);
    if (items == NULL)
      return ENOMEM;
    l->items = items;
    l->cap = cap;
  }
  l->items[l->n].key = strdup(key);
  if (l->items[l->n].key == NULL)
    return ENOMEM;
  l->items[l->n++].size = size;
  return 0;
}

static void listing_free(listing *l)
{
  for (size_t i = 0; i < l->n; i++)
    free(l->items[i].key);
  free(l->items);
}

/* Walks DIR/rel (rel "" or ending in '/'), adding the keys that start
 * with prefix. Names with a '~' (temporary files) are skipped. */
static int walk(objstore *s, const char *rel, const char *prefix, listing *out)
{
  char *path = NULL;
  if (asprintf(&path, "%s/%s", store_dir(s), rel) < 0)
    return ENOMEM;
  DIR *d = opendir(path);
  free(path);
  if (d == NULL)
    return errno == ENOENT || errno == ENOTDIR ? 0 : errno;
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strchr(e->d_name, '~') != NULL)
      continue;
    char *key = NULL;
    if (asprintf(&key, "%s%s", rel, e->d_name) < 0) {
      rc = ENOMEM;
      break;
    }
    struct stat st;
    size_t plen = strlen(prefix), klen = strlen(key);
    size_t common = plen < klen ? plen : klen;
    if (fstatat(dirfd(d), e->d_name, &st, 0) != 0) {
      rc = errno == ENOENT ? 0 : errno; /* deleted meanwhile */
    } else if (strncmp(key, prefix, common) != 0) {
      /* neither under the prefix nor on the way to it */
    } else if (S_ISDIR(st.st_mode)) {
      char *sub = NULL;
      if (asprintf(&sub, "%s/", key) < 0)
        rc = ENOMEM;
      else
        rc = walk(s, sub, prefix, out);
      free(sub);
    } else if (S_ISREG(st.st_mode) && klen >= plen) {
      rc = listing_add(out, key, (uint64_t)st.st_size);
    }
    free(key);
  }
  closedir(d);
  return rc;
}

static int by_key(const void *a, const void *b)
{
  return strcmp(((const listed *)a)->key, ((const listed *)b)->key);
}

static int file_list(objstore *s, const char *prefix, objstore_each_fn each,
                     void *ctx)
{
  s->stats.lists++;
  int rc = check_root(s, "LIST", prefix);
  if (rc != 0)
    return rc;
  /* Start at the prefix's directory part: "a/b/c" walks "a/b/". */
  const char *slash = strrchr(prefix, '/');
  size_t dlen = slash ? (size_t)(slash - prefix) + 1 : 0;
  char *rel = strndup(prefix, dlen);
  if (rel == NULL)
    return ENOMEM;
  listing l = {0};
  rc = walk(s, rel, prefix, &l);
  free(rel);
  if (rc != 0) {
    listing_free(&l);
    return objstore_fail(s, rc, "LIST %s/%s: %s", s->url, prefix, strerror(rc));
  }
  if (l.n > 0) /* items is NULL for an empty listing */
    qsort(l.items, l.n, sizeof *l.items, by_key);
  for (size_t i = 0; i < l.n && rc == 0; i++)
    rc = each(ctx, l.items[i].key, l.items[i].size);
  listing_free(&l);
  return rc;
}

static int file_delete(objstore *s, const char *key)
{
  s->stats.deletes++;
  int rc = check_root(s, "DELETE", key);
  if (rc != 0)
    return rc;
  char *path = key_path(s, key);
  if (path == NULL)
    return ENOMEM;
  if (unlink(path) != 0)
    rc = errno == ENOENT ? -1 : errno;
  if (rc == 0) {
    *strrchr(path, '/') = '\0';
    rc = fsync_dir(path);
  }
  free(path);
  if (rc > 0)
    return objstore_fail(s, rc, "DELETE %s/%s: %s", s->url, key, strerror(rc));
  return 0;
}

static void file_close(objstore *s)
{
  free(((file_store *)s)->dir);
  free(s);
}

static const struct objstore_backend file_backend = {
    .put = file_put,
    .get = file_get,
    .get_range = file_get_range,
    .list = file_list,
    .del = file_delete,
    .close = file_close,
};

int objstore_file_open(const char *url, const char *location,
                       const objstore_options *options, objstore **out)
{
  *out = NULL;
  size_t n = strlen(location);
  while (n > 1 && location[n - 1] == '/')
    n--;
  if (n < 2 || location[0] != '/')
    return REPLICATE_EINVAL;
  file_store *fs = calloc(1, sizeof *fs);
  if (fs == NULL)
    return ENOMEM;
  fs->dir = strndup(location, n);
  int rc = fs->dir == NULL ? ENOMEM : 0;
  if (rc == 0)
    rc = objstore_init_common(&fs->base, &file_backend, url, options);
  if (rc != 0) {
    free(fs->base.url);
    free(fs->dir);
    free(fs);
    return rc;
  }
  *out = &fs->base;
  return 0;
}
