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

static void name_or_null(http_json_writer *w, const char *key, const char *v)
{
  http_json_key(w, key);
  http_json_string(w, v[0] ? v : NULL);
}

static void member_json(const http_cluster_member *m, http_json_writer *w)
{
  http_json_object_begin(w);
  http_json_member_string(w, "name", m->name);
  name_or_null(w, "url", m->url);
  http_json_member_string(w, "role", m->leader ? "leader" : "standby");
  http_json_member_uint(w, "epoch", m->epoch);
  http_json_member_uint(w, "received_seq", m->received_seq);
  http_json_member_uint(w, "applied_seq", m->applied_seq);
  http_json_key(w, "lag");
  http_json_object_begin(w);
  http_json_member_uint(w, "frames", m->lag_frames);
  http_json_member_double(w, "seconds", m->lag_seconds);
  http_json_object_end(w);
  name_or_null(w, "state", m->state);
  http_json_object_end(w);
}

static void rewound_json(const http_cluster_status *c, http_json_writer *w)
{
  http_json_key(w, "rewound");
  if (!c->rewound) {
    http_json_null(w);
    return;
  }
  http_json_object_begin(w);
  http_json_member_uint(w, "frames", c->rewound_frames);
  http_json_member_uint(w, "from_seq", c->rewound_from_seq);
  http_json_member_time_ns(w, "at", c->rewound_at_ns);
  http_json_member_uint(w, "pages", c->rewound_pages);
  http_json_member_uint(w, "image_pages", c->rewound_image_pages);
  http_json_object_end(w);
}

/* "cluster": {"name", "member", "leader", "leader_url", "epoch",
 * "lease_ttl", "etcd", "sync_set", "members"}, then "rewound". */
void http_cluster_json(const http_cluster_status *c, http_json_writer *w)
{
  http_json_key(w, "cluster");
  http_json_object_begin(w);
  http_json_member_string(w, "name", c->name);
  http_json_member_string(w, "member", c->member);
  name_or_null(w, "leader", c->leader);
  name_or_null(w, "leader_url", c->leader_url);
  http_json_member_uint(w, "epoch", c->epoch);
  http_json_member_uint(w, "lease_ttl", c->lease_ttl);
  http_json_member_string(w, "etcd", c->etcd_ok ? "ok" : "unreachable");
  name_or_null(w, "etcd_error", c->etcd_ok ? "" : c->etcd_error);
  http_json_key(w, "sync_set");
  http_json_array_begin(w);
  for (size_t i = 0; i < c->sync_count && i < HTTP_CLUSTER_MEMBERS_MAX; i++)
    http_json_string(w, c->sync_set[i]);
  http_json_array_end(w);
  http_json_key(w, "members");
  http_json_array_begin(w);
  for (size_t i = 0; i < c->member_count && i < HTTP_CLUSTER_MEMBERS_MAX; i++)
    member_json(&c->members[i], w);
  http_json_array_end(w);
  http_json_object_end(w);
  rewound_json(c, w);
}
