/* cmd_cluster.c: loomship cluster --etcd URL[,URL]... [--cluster NAME]
 * [--json]: list a cluster's members from etcd, like `patronictl list`
 * (DESIGN section 5; the keys are docs/CLUSTER.md "Keys in etcd").
 *
 * One range over /loomship/CLUSTER/ reads members/NAME, leader, epoch and
 * sync at one revision. Exit: 0 listed (also an empty cluster), 1 error
 * (etcd answered with an error or garbage), 2 usage or etcd unreachable. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "etcd.h"

typedef struct cluster_args {
  const char *etcd;
  const char *cluster;
  int json;
} cluster_args;

static const cli_option cluster_options[] = {
    {.name = "etcd", .arg = "URL[,URL]...", .kind = CLI_TEXT,
     .offset = offsetof(cluster_args, etcd), .required = true,
     .help = "etcd client URLs, comma-separated (tried in turn)"},
    {.name = "cluster", .arg = "NAME", .kind = CLI_TEXT,
     .offset = offsetof(cluster_args, cluster), .dflt = CLUSTER_DEFAULT_NAME,
     .help = "the cluster's name: its keys are under /loomship/NAME/"},
    {.name = "json", .kind = CLI_FLAG, .offset = offsetof(cluster_args, json),
     .help = "print one JSON object: {\"name\", \"leader\", \"epoch\", "
             "\"members\": [...]}"},
    {0},
};

/* What the range read. */
struct view {
  const char *name;
  struct cluster_member *members;
  size_t count;
  bool has_leader;
  struct cluster_leader leader;
  int64_t epoch;       /* the leader's epoch, else the counter's */
  json_t *sync;        /* the sync set's names (array), or NULL */
};

static bool in_sync(const struct view *v, const char *name)
{
  size_t i;
  json_t *n;
  json_array_foreach(v->sync, i, n)
    if (json_is_string(n) && strcmp(json_string_value(n), name) == 0)
      return true;
  return false;
}

static void view_key(struct view *v, const char *rest,
                     const struct cluster_kv *kv)
{
  if (strncmp(rest, "members/", 8) == 0) {
    struct cluster_member *m = &v->members[v->count];
    if (cluster_member_parse(kv->value, kv->value_len, m) == 0)
      v->count++;
    else
      fprintf(stderr, "loomship cluster: %s: not a member record, left out\n",
              kv->key);
  } else if (strcmp(rest, "leader") == 0) {
    v->has_leader = cluster_leader_parse(kv->value, kv->value_len,
                                         &v->leader) == 0;
    if (!v->has_leader)
      fprintf(stderr, "loomship cluster: %s: not a leader record\n", kv->key);
  } else if (strcmp(rest, "epoch") == 0 && !v->has_leader) {
    cluster_epoch_parse(kv->value, kv->value_len, &v->epoch);
  } else if (strcmp(rest, "sync") == 0) {
    json_t *s = json_loadb(kv->value, kv->value_len, 0, NULL);
    json_t *names = json_object_get(s, "members");
    if (json_is_array(names))
      v->sync = json_incref(names);
    json_decref(s);
  }
}

static int member_order(const void *a, const void *b)
{
  return strcmp(((const struct cluster_member *)a)->name,
                ((const struct cluster_member *)b)->name);
}

static int view_read(const struct cluster_kv_list *list, size_t prefix_len,
                     struct view *v)
{
  v->members = calloc(list->count + 1, sizeof *v->members);
  if (!v->members)
    return cli_fail("cluster", "out of memory");
  for (size_t i = 0; i < list->count; i++)
    view_key(v, list->items[i].key + prefix_len, &list->items[i]);
  if (v->has_leader)
    v->epoch = v->leader.epoch;
  qsort(v->members, v->count, sizeof *v->members, member_order);
  return 0;
}

static int print_json(const struct view *v)
{
  json_t *members = json_array();
  for (size_t i = 0; members && i < v->count; i++) {
    const struct cluster_member *m = &v->members[i];
    json_array_append_new(members, json_pack(
        "{s:s, s:s, s:s, s:I, s:I, s:I, s:{s:I, s:f}, s:s}",
        "name", m->name, "url", m->url, "role", m->role,
        "epoch", (json_int_t)m->epoch,
        "received_seq", (json_int_t)m->received_seq,
        "applied_seq", (json_int_t)m->applied_seq,
        "lag", "frames", (json_int_t)m->lag_frames, "seconds", m->lag_seconds,
        "state", m->state));
  }
  /* json_pack, not json_string/json_null: http/json.c has functions of
   * those names, and the loomship binary links both */
  json_t *root = v->has_leader
      ? json_pack("{s:s, s:s, s:I, s:o}", "name", v->name, "leader",
                  v->leader.name, "epoch", (json_int_t)v->epoch, "members",
                  members)
      : json_pack("{s:s, s:n, s:I, s:o}", "name", v->name, "leader",
                  "epoch", (json_int_t)v->epoch, "members", members);
  char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER)
                    : NULL;
  json_decref(root);
  if (!text)
    return cli_fail("cluster", "out of memory");
  puts(text);
  free(text);
  return 0;
}

enum { COLUMNS = 9 };

static void row_cells(const struct view *v, const struct cluster_member *m,
                      char cell[COLUMNS][280])
{
  bool leads = v->has_leader && strcmp(v->leader.name, m->name) == 0;
  snprintf(cell[0], 280, "%s%s", m->name, leads ? " *" : "");
  snprintf(cell[1], 280, "%s", m->url);
  snprintf(cell[2], 280, "%s%s", m->role,
           !leads && in_sync(v, m->name) ? " (sync)" : "");
  snprintf(cell[3], 280, "%s", m->state[0] ? m->state : "-");
  snprintf(cell[4], 280, "%lld", (long long)m->epoch);
  snprintf(cell[5], 280, "%lld", (long long)m->received_seq);
  snprintf(cell[6], 280, "%lld", (long long)m->applied_seq);
  snprintf(cell[7], 280, "%lld", (long long)m->lag_frames);
  snprintf(cell[8], 280, "%.3f", m->lag_seconds);
}

static void print_row(char cell[COLUMNS][280], const int *width)
{
  for (int c = 0; c < COLUMNS; c++)
    printf("| %-*s ", width[c], cell[c]);
  printf("|\n");
}

static int print_table(const struct view *v)
{
  static const char *head[COLUMNS] = {"Member", "URL", "Role", "State",
      "Epoch", "Received", "Applied", "Lag frames", "Lag s"};
  char (*cells)[COLUMNS][280] = calloc(v->count + 1, sizeof *cells);
  if (!cells)
    return cli_fail("cluster", "out of memory");
  int width[COLUMNS];
  for (int c = 0; c < COLUMNS; c++) {
    snprintf(cells[0][c], 280, "%s", head[c]);
    width[c] = (int)strlen(head[c]);
  }
  for (size_t i = 0; i < v->count; i++) {
    row_cells(v, &v->members[i], cells[i + 1]);
    for (int c = 0; c < COLUMNS; c++)
      if ((int)strlen(cells[i + 1][c]) > width[c])
        width[c] = (int)strlen(cells[i + 1][c]);
  }
  printf("Cluster: %s, leader: %s, epoch %lld (* leads)\n", v->name,
         v->has_leader ? v->leader.name : "none", (long long)v->epoch);
  for (size_t i = 0; i <= v->count; i++)
    print_row(cells[i], width);
  if (v->count == 0)
    printf("(no members)\n");
  free(cells);
  return 0;
}

static int run_cluster(void *args)
{
  const cluster_args *a = args;
  const char *name = a->cluster ? a->cluster : CLUSTER_DEFAULT_NAME;
  char prefix[128];
  if (cluster_key(prefix, sizeof prefix, name, "")) {
    fprintf(stderr, "loomship cluster: --cluster must be 1-63 characters of "
            "[A-Za-z0-9._-], not '%s'\n", name);
    return 2;
  }
  struct cluster_etcd_options o = {.endpoints = a->etcd, .timeout_ms = 2000};
  struct cluster_etcd *etcd = NULL;
  if (cluster_etcd_open(&o, &etcd)) {
    fprintf(stderr, "loomship cluster: --etcd must be http(s):// URLs "
            "separated by commas, not '%s'\n", a->etcd);
    return 2;
  }
  struct cluster_kv_list list;
  int rc = cluster_etcd_range_prefix(etcd, prefix, &list);
  if (rc) {
    bool unreachable = rc == CLUSTER_EUNREACHABLE || rc == CLUSTER_ETIMEDOUT;
    fprintf(stderr, "loomship cluster: %s%s (%s)\n",
            unreachable ? "etcd unreachable: " : "etcd error: ",
            cluster_strerror(rc), cluster_etcd_error(etcd));
    cluster_etcd_close(etcd);
    return unreachable ? 2 : 1;
  }
  cluster_etcd_close(etcd);
  struct view v = {.name = name};
  rc = view_read(&list, strlen(prefix), &v);
  if (!rc)
    rc = a->json ? print_json(&v) : print_table(&v);
  cluster_kv_list_free(&list);
  free(v.members);
  json_decref(v.sync);
  return rc;
}

const cli_command cmd_cluster = {
    .name = "cluster",
    .summary = "list a cluster's members from etcd, like patronictl list",
    .options = cluster_options, .args_size = sizeof(cluster_args),
    .run = run_cluster};
