/*
 * example_member.c: an application of its own as a cluster member, with
 * only the installed headers of loomship-cluster (node.h, etcd.h) and
 * loomship-replicate (loom.h, replicate.h). It keeps a counter in page 0
 * of its arena, saves it SAVES times while it leads, and acknowledges each
 * save only when cluster_node_may_ack allows (docs/CLUSTER.md "The C API").
 *
 *   example_member NAME DIR PORT ETCD_URLS [SAVES]
 *
 * With LOOMSHIP_ETCD_ENDPOINTS set (tests/cluster/etcd_live.py), the
 * arguments default to a member "example" alone on a free port: it must
 * lead, acknowledge SAVES (20) saves, stop with a planned stop and exit 0,
 * removing the directory it made.
 */
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loom.h"
#include "node.h"
#include "replicate.h"

typedef struct app {
  const char *dir;
  loom *l;
  replicate_log *log;
  replicate_shipper *shipper;
  uint64_t counter;
} app;

/* The commit hook: every commit goes to the shipper (the members). */
static int on_commit(void *ctx, loom *l, const loom_commit *c)
{
  app *a = ctx;
  return a->shipper ? replicate_shipper_on_commit(a->shipper, l, c) : 0;
}

/* You lead: open the loom on the directory (already at the new epoch),
 * a replication log and a shipper with room for the members. */
static int on_lead(void *ctx, cluster_node *node, uint64_t epoch)
{
  app *a = ctx;
  loom_options o = {.arena_pages = 256, .flags = LOOM_CREATE | LOOM_APPLY_ASYNC,
                    .on_commit = on_commit, .commit_ctx = a};
  int rc = loom_open(a->dir, &o, &a->l);
  if (!rc)
    rc = replicate_log_open(a->dir, NULL, NULL, &a->log);
  if (!rc) {
    replicate_shipper_options so = {.store = loom_get_store(a->l), .log = a->log,
                                    .max_peers = 16};
    rc = replicate_shipper_start(&so, &a->shipper);
  }
  if (!rc)
    cluster_node_attach_shipper(node, a->shipper);
  memcpy(&a->counter, loom_page(a->l, 0), sizeof a->counter);
  printf("leading at epoch %llu, counter %llu\n", (unsigned long long)epoch,
         (unsigned long long)a->counter);
  fflush(stdout);
  return rc;
}

/* Stop writing: close everything that used the directory. */
static void on_stop_writing(void *ctx, cluster_node *node)
{
  app *a = ctx;
  cluster_node_attach_shipper(node, NULL);
  replicate_shipper_stop(a->shipper);
  a->shipper = NULL;
  if (a->log)
    replicate_log_close(a->log);
  a->log = NULL;
  if (a->l)
    loom_close(a->l);
  a->l = NULL;
}

static void say(void *ctx, const char *line)
{
  (void)ctx;
  fprintf(stderr, "example: %s\n", line);
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static uint16_t free_port(void)
{
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  bind(s, (struct sockaddr *)&sa, sizeof sa);
  getsockname(s, (struct sockaddr *)&sa, &len);
  close(s);
  return ntohs(sa.sin_port);
}

int main(int argc, char **argv)
{
  const char *env = getenv("LOOMSHIP_ETCD_ENDPOINTS");
  char dir[] = "/tmp/loomship-example-XXXXXX";
  if (argc < 5 && (!env || !mkdtemp(dir))) {
    fprintf(stderr, "usage: example_member NAME DIR PORT ETCD_URLS [SAVES]\n");
    return 2;
  }
  app a = {.dir = argc >= 5 ? argv[2] : dir};
  uint64_t saves = argc >= 6 ? strtoull(argv[5], NULL, 10) : 20, acked = 0;
  struct cluster_node_options o = {
      .name = argc >= 5 ? argv[1] : "example", .dir = a.dir, .listen_host = "127.0.0.1",
      .listen_port = argc >= 5 ? (uint16_t)atoi(argv[3]) : free_port(),
      .etcd = argc >= 5 ? argv[4] : env, .cluster = "example", .ttl = 2,
      .on_lead = on_lead, .on_stop_writing = on_stop_writing, .ctx = &a,
      .log = say};
  cluster_node *node;
  int rc = cluster_node_start(&o, &node);
  if (rc) {
    fprintf(stderr, "cluster_node_start: %s\n", cluster_strerror(rc));
    if (argc < 5)
      nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 1;
  }
  while (acked < saves) {
    if (!cluster_node_write_begin(node, 0.2))
      continue;
    a.counter++;
    memcpy(loom_page(a.l, 0), &a.counter, sizeof a.counter);
    loom_position pos;
    rc = loom_save(a.l, 1, 256);
    loom_store_position(loom_get_store(a.l), &pos);
    if (rc == 0 && cluster_node_may_ack(node, &pos))
      acked++;
    cluster_node_write_end(node);
  }
  printf("%llu saves acknowledged, counter %llu\n", (unsigned long long)acked,
         (unsigned long long)a.counter);
  rc = cluster_node_stop(node);
  if (argc < 5) /* the directory it made for itself goes with it */
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  return rc == 0 || rc == 1 ? 0 : 1; /* alone: nobody to hand over to */
}
