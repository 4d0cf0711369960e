/*
 * resync.c: loomship standby --resync-from URL, the operator's act that
 * replaces a standby's history (DESIGN section 3): at start, the standby's
 * directory DIR is replaced by a verified backup pulled from URL.
 *
 *   1. Lock DIR (its lock file, as the store does): a live node there
 *      refuses the resync.
 *   2. Remove what an earlier, interrupted resync left beside DIR:
 *      DIR.resync and DIR.resync.partial-*.
 *   3. Pull the backup into DIR.resync with the `loomship backup` client
 *      (every page checked against the stream's checksum, loom_verify,
 *      files and directory fsynced, renamed into place).
 *   4. Swap DIR.resync and DIR with one renameat2(RENAME_EXCHANGE) (a plain
 *      rename when DIR does not exist), then fsync the parent: a crash at
 *      any instant leaves the old directory or the new one at DIR, never a
 *      mix, and never no DIR at all.
 *   5. Remove the old contents, now at DIR.resync (image, receive log), or
 *      the new copy if the swap failed.
 * Any failure leaves DIR as it was.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "loom.h"

#define PATH_CAP 4000 /* cli_backup_pull adds its suffixes to 4200 */

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
  (void)st, (void)ftw;
  if (flag == FTW_DP)
    rmdir(path);
  else
    unlink(path);
  return 0; /* best effort: go on with the rest */
}

static void remove_tree(const char *path)
{
  nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Step 1: -1 when DIR does not exist (nothing to lock), the lock's fd, or
 * -2 after an error line. */
static int lock_dir(const char *dir)
{
  struct stat st;
  if (stat(dir, &st) != 0)
    return errno == ENOENT ? -1 : (cli_fail("standby", "%s: %s", dir, strerror(errno)), -2);
  if (!S_ISDIR(st.st_mode))
    return cli_fail("standby", "%s is not a directory", dir), -2;
  char path[PATH_CAP + 16];
  snprintf(path, sizeof path, "%s/lock", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return cli_fail("standby", "%s: %s", path, strerror(errno)), -2;
  if (flock(fd, LOCK_EX | LOCK_NB) == 0)
    return fd;
  int err = errno;
  close(fd);
  if (err == EWOULDBLOCK)
    return cli_fail("standby", "%s is in use by another process: stop it before "
                    "--resync-from", dir), -2;
  return cli_fail("standby", "lock %s: %s", path, strerror(err)), -2;
}

/* Step 2, in parent: entries named base + ".resync" or base +
 * ".resync.partial-..." */
static void remove_leftovers(const char *parent, const char *base)
{
  DIR *d = opendir(parent);
  if (!d)
    return;
  char prefix[PATH_CAP + 32];
  snprintf(prefix, sizeof prefix, "%s.resync", base);
  size_t n = strlen(prefix);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, n) != 0 ||
        (e->d_name[n] != '\0' && strncmp(e->d_name + n, ".partial-", 9) != 0))
      continue;
    char path[2 * PATH_CAP + 64], line[2 * PATH_CAP + 128];
    snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
    snprintf(line, sizeof line, "resync: removing %s, left by an interrupted resync", path);
    cli_log("standby", line);
    remove_tree(path);
  }
  closedir(d);
}

/* Step 4. */
static int swap_in(const char *fresh, const char *dir, int dir_exists, const char *parent)
{
  int rc = dir_exists ? renameat2(AT_FDCWD, fresh, AT_FDCWD, dir, RENAME_EXCHANGE)
                      : rename(fresh, dir);
  if (rc != 0) {
    int err = errno;
    const char *why = err == EINVAL ? " (this file system cannot exchange two "
                                      "directories atomically)"
                      : err == EBUSY || err == EXDEV
                          ? " (the directory is a mount point: mount its volume one "
                            "level up, so that DIR.resync is on the same file system)"
                          : "";
    return cli_fail("standby", "swap %s into %s: %s%s; %s was left as it was", fresh, dir,
                    strerror(err), why, dir);
  }
  /* Or the swap may be undone by a crash after the standby served from it. */
  if ((rc = cli_sync_dir(parent)) != 0)
    return cli_fail("standby", "fsync %s: %s", parent, strerror(rc));
  return 0;
}

int cli_standby_resync(const char *dir_arg, const char *from, const char *token,
                       const char *ca_file, const replicate_frame_key *key)
{
  char dir[PATH_CAP], fresh[PATH_CAP + 16], parent[PATH_CAP];
  size_t len = strlen(dir_arg);
  while (len > 1 && dir_arg[len - 1] == '/')
    len--;
  if (len >= PATH_CAP)
    return cli_fail("standby", "--dir is too long");
  memcpy(dir, dir_arg, len);
  dir[len] = '\0';
  snprintf(fresh, sizeof fresh, "%s.resync", dir);
  const char *slash = strrchr(dir, '/');
  const char *base = slash ? slash + 1 : dir;
  snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash == dir ? 1 : slash - dir) : 1,
           slash ? dir : ".");

  int lock = lock_dir(dir);                                        /* 1 */
  if (lock == -2)
    return 1;
  remove_leftovers(parent, base);                                  /* 2 */
  char line[PATH_CAP + 256];
  snprintf(line, sizeof line, "resync: pulling a backup from %s to replace %s", from, dir);
  cli_log("standby", line);
  int rc = cli_backup_pull_keyed(from, fresh, token, ca_file, key, 8, 1); /* 3 */
  if (rc == 0)
    rc = swap_in(fresh, dir, lock >= 0, parent);                   /* 4 */
  /* 5: the old contents after a swap; the new copy if the swap failed
   * (renameat2 is atomic: one or the other is at fresh, or nothing). */
  remove_tree(fresh);
  if (lock >= 0)
    close(lock);
  if (rc != 0)
    return cli_fail("standby", "resync from %s failed: %s %s", from, dir,
                    lock >= 0 ? "was left as it was" : "was not created");
  loom_position p = {0};
  char hex[17];
  loom_inspect(dir, &p);
  snprintf(line, sizeof line, "resync: %s now holds epoch %llu seq %llu checksum %s "
           "(%llu pages), verified, from %s; its previous contents were removed", dir,
           (unsigned long long)p.epoch, (unsigned long long)p.seq, cli_hex64(p.checksum, hex),
           (unsigned long long)p.pages, from);
  cli_log("standby", line);
  return 0;
}
