/* cmd_local.c: the subcommands that read an image directory directly:
 * inspect and verify. */
#include <string.h>

#include "cli.h"
#include "loom.h"

int cli_fail_store(const char *cmd, const char *dir, int rc, const char *remedy)
{
  if (rc != LOOM_EMETA)
    return cli_fail(cmd, "%s: %s", dir, loom_strerror(rc));
  size_t n = strlen(dir);
  const char *sep = n && dir[n - 1] == '/' ? "" : "/";
  return cli_fail(cmd, "%s%smeta: the recorded position is missing or damaged (neither "
                  "slot passes its checks), so the image cannot be trusted; nothing was "
                  "changed. %s", dir, sep,
                  remedy ? remedy
                         : "Restore the directory from a backup (loomship backup), or, "
                           "for a standby, restart it with --resync-from URL");
}

typedef struct local_args {
  const char *dir;
  int json;
  uint64_t at; /* inspect --at SEQ; 0: not given */
} local_args;

static const cli_option inspect_options[] = {
    {.name = "json", .kind = CLI_FLAG, .offset = offsetof(local_args, json),
     .help = "print the position as one JSON object"},
    {.name = "at", .arg = "SEQ", .kind = CLI_NUMBER,
     .offset = offsetof(local_args, at), .min = 1, .max = UINT64_MAX,
     .help = "print the epoch and checksum the directory had at SEQ (from "
             "its positions ring; exit 1 when the ring no longer has it)"},
    {0},
};

/* inspect --at SEQ: the epoch and checksum at seq, from DIR/positions,
 * for seqs at or below the directory's position (a slot above it may be
 * left from before a rollback). */
static int inspect_at(const char *dir, uint64_t seq, int json)
{
  loom_position p;
  int rc = loom_inspect(dir, &p);
  if (rc)
    return cli_fail_store("inspect", dir, rc, NULL);
  if (seq > p.seq)
    return cli_fail("inspect", "%s: seq %llu is past the directory's position "
                    "(seq %llu)", dir, (unsigned long long)seq,
                    (unsigned long long)p.seq);
  loom_store *store = NULL;
  rc = loom_store_open(dir, LOOM_READONLY, NULL, &store);
  if (rc)
    return cli_fail_store("inspect", dir, rc, NULL);
  uint64_t epoch = 0, checksum = 0;
  int known = loom_store_checksum_at(store, seq, &epoch, &checksum);
  loom_store_close(store);
  if (!known)
    return cli_fail("inspect", "%s: the positions ring no longer has seq %llu "
                    "(older than its last 2^20 commits, lost in a crash, or "
                    "merged by a group apply)", dir, (unsigned long long)seq);
  char hex[17];
  if (json)
    printf("{\"seq\": %llu, \"epoch\": %llu, \"checksum\": \"%s\"}\n",
           (unsigned long long)seq, (unsigned long long)epoch,
           cli_hex64(checksum, hex));
  else
    printf("seq        %llu\nepoch      %llu\nchecksum   %s\n",
           (unsigned long long)seq, (unsigned long long)epoch,
           cli_hex64(checksum, hex));
  return 0;
}

static int run_inspect(void *args)
{
  const local_args *a = args;
  if (a->at)
    return inspect_at(a->dir, a->at, a->json);
  const char *dir = a->dir;
  int json = a->json;
  loom_position p;
  loom_lineage lineage;
  int rc = loom_inspect_lineage(dir, &p, &lineage);
  if (rc)
    return cli_fail_store("inspect", dir, rc, NULL);
  char hex[17], history[2 * LOOM_HISTORY_SIZE + 1];
  loom_history_hex(&lineage.history, history);
  int none = loom_history_is_none(&lineage.history);
  if (json) {
    printf("{\"epoch\": %llu, \"seq\": %llu, \"checksum\": \"%s\", \"pages\": %llu, "
           "\"page_size\": %u, \"commit_time_ns\": %lld, \"history\": %s%s%s, "
           "\"branches\": [",
           (unsigned long long)p.epoch, (unsigned long long)p.seq,
           cli_hex64(p.checksum, hex), (unsigned long long)p.pages, LOOM_PAGE_SIZE,
           (long long)p.commit_time_ns, none ? "" : "\"", none ? "null" : history,
           none ? "" : "\"");
    for (uint32_t i = 0; i < lineage.branch_count; i++)
      printf("%s{\"epoch\": %llu, \"seq\": %llu, \"checksum\": \"%s\"}", i ? ", " : "",
             (unsigned long long)lineage.branches[i].epoch,
             (unsigned long long)lineage.branches[i].seq,
             cli_hex64(lineage.branches[i].checksum, hex));
    printf("]}\n");
  } else {
    printf("epoch      %llu\nseq        %llu\nchecksum   %s\npages      %llu\n"
           "page_size  %u\nhistory    %s\n",
           (unsigned long long)p.epoch, (unsigned long long)p.seq,
           cli_hex64(p.checksum, hex), (unsigned long long)p.pages, LOOM_PAGE_SIZE,
           none ? "none" : history);
    for (uint32_t i = 0; i < lineage.branch_count; i++)
      printf("branch     epoch %llu began at seq %llu (checksum %s)\n",
             (unsigned long long)lineage.branches[i].epoch,
             (unsigned long long)lineage.branches[i].seq,
             cli_hex64(lineage.branches[i].checksum, hex));
  }
  return 0;
}

static const cli_option verify_options[] = {{0}};

/* verify's exit codes (DESIGN.md section 5). */
enum {
  VERIFY_OK = 0,
  VERIFY_CORRUPT = 1,     /* mismatch, or a damaged record (what and where) */
  VERIFY_UNREADABLE = 2,  /* no image there, or it cannot be read */
  VERIFY_IN_USE = 3,      /* a live writer holds it */
};

static int run_verify(void *args)
{
  const char *dir = ((const local_args *)args)->dir;
  loom_position rec = {0};
  uint64_t computed = 0;
  int rc = loom_verify(dir, &rec, &computed);
  char a[17], b[17];
  if (rc == LOOM_EMETA) {
    cli_fail_store("verify", dir, rc, NULL);
    return VERIFY_CORRUPT;
  }
  if (rc == LOOM_ECORRUPT) {
    cli_fail("verify", "%s: checksum mismatch: recorded %s at seq %llu, pages say %s", dir,
             cli_hex64(rec.checksum, a), (unsigned long long)rec.seq, cli_hex64(computed, b));
    return VERIFY_CORRUPT;
  }
  if (rc == LOOM_ELOCKED) {
    cli_fail("verify", "%s: %s; stop it, or verify a backup (loomship backup)", dir,
             loom_strerror(rc));
    return VERIFY_IN_USE;
  }
  if (rc) {
    cli_fail("verify", "%s: %s", dir, loom_strerror(rc));
    return VERIFY_UNREADABLE;
  }
  printf("ok: epoch %llu seq %llu checksum %s pages %llu\n",
         (unsigned long long)rec.epoch, (unsigned long long)rec.seq,
         cli_hex64(rec.checksum, a), (unsigned long long)rec.pages);
  return 0;
}

const cli_command cmd_inspect = {
    .name = "inspect", .summary = "show an image directory's position",
    .options = inspect_options, .positional = "DIR",
    .positional_offset = offsetof(local_args, dir), .args_size = sizeof(local_args),
    .run = run_inspect};
const cli_command cmd_verify = {
    .name = "verify",
    .summary = "recompute an image's checksum and check it against its position",
    .options = verify_options, .positional = "DIR",
    .positional_offset = offsetof(local_args, dir), .args_size = sizeof(local_args),
    .run = run_verify};
