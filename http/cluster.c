/*
 * cluster.c: what a cluster member (cluster/, DESIGN.md section 6) adds to
 * the status document: "cluster" and "rewound". The names are a public
 * contract, like the rest of the document.
 */
#include <stdlib.h>

#include "server_internal.h"

http_cluster_status *http_cluster_collect(http_server *s)
{
  if (!s->cluster.get)
    return NULL;
  http_cluster_status *c = calloc(1, sizeof *c);
  if (c)
    s->cluster.get(s->cluster.ctx, c);
  return c;
}

static void name_or_null(json_writer *w, const char *key, const char *v)
{
  json_key(w, key);
  json_string(w, v[0] ? v : NULL);
}

static void member_json(const http_cluster_member *m, json_writer *w)
{
  json_object_begin(w);
  json_key(w, "name");
  json_string(w, m->name);
  name_or_null(w, "url", m->url);
  json_key(w, "role");
  json_string(w, m->leader ? "leader" : "standby");
  json_key(w, "epoch");
  json_uint(w, m->epoch);
  json_key(w, "received_seq");
  json_uint(w, m->received_seq);
  json_key(w, "applied_seq");
  json_uint(w, m->applied_seq);
  json_key(w, "lag");
  json_object_begin(w);
  json_key(w, "frames");
  json_uint(w, m->lag_frames);
  json_key(w, "seconds");
  json_double(w, m->lag_seconds);
  json_object_end(w);
  name_or_null(w, "state", m->state);
  json_object_end(w);
}

static void rewound_json(const http_cluster_status *c, json_writer *w)
{
  json_key(w, "rewound");
  if (!c->rewound) {
    json_null(w);
    return;
  }
  json_object_begin(w);
  json_key(w, "frames");
  json_uint(w, c->rewound_frames);
  json_key(w, "from_seq");
  json_uint(w, c->rewound_from_seq);
  json_key(w, "at");
  json_time_ns(w, c->rewound_at_ns);
  json_object_end(w);
}

/* "cluster": {"name", "member", "leader", "leader_url", "epoch",
 * "lease_ttl", "etcd", "sync_set", "members"}, then "rewound". */
void http_cluster_json(const http_cluster_status *c, json_writer *w)
{
  json_key(w, "cluster");
  json_object_begin(w);
  json_key(w, "name");
  json_string(w, c->name);
  json_key(w, "member");
  json_string(w, c->member);
  name_or_null(w, "leader", c->leader);
  name_or_null(w, "leader_url", c->leader_url);
  json_key(w, "epoch");
  json_uint(w, c->epoch);
  json_key(w, "lease_ttl");
  json_uint(w, c->lease_ttl);
  json_key(w, "etcd");
  json_string(w, c->etcd_ok ? "ok" : "unreachable");
  json_key(w, "sync_set");
  json_array_begin(w);
  for (size_t i = 0; i < c->sync_count && i < HTTP_CLUSTER_MEMBERS_MAX; i++)
    json_string(w, c->sync_set[i]);
  json_array_end(w);
  json_key(w, "members");
  json_array_begin(w);
  for (size_t i = 0; i < c->member_count && i < HTTP_CLUSTER_MEMBERS_MAX; i++)
    member_json(&c->members[i], w);
  json_array_end(w);
  json_object_end(w);
  rewound_json(c, w);
}
