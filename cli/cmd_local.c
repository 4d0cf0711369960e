/* cmd_local.c: the subcommands that read an image directory directly:
 * inspect and verify. */
#include <string.h>

#include "cli.h"
#include "loom.h"

static int run_inspect(int argc, char **argv)
{
  const char *dir = NULL;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json"))
      json = 1;
    else if (argv[i][0] == '-' || dir)
      return cli_usage(&cmd_inspect);
    else
      dir = argv[i];
  }
  if (!dir)
    return cli_usage(&cmd_inspect);
  loom_position p;
  loom_lineage lineage;
  int rc = loom_inspect_lineage(dir, &p, &lineage);
  if (rc)
    return cli_fail("inspect", "%s: %s", dir, loom_strerror(rc));
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

static int run_verify(int argc, char **argv)
{
  if (argc != 2 || argv[1][0] == '-')
    return cli_usage(&cmd_verify);
  loom_position rec = {0};
  uint64_t computed = 0;
  int rc = loom_verify(argv[1], &rec, &computed);
  char a[17], b[17];
  if (rc == LOOM_ECORRUPT)
    return cli_fail("verify", "%s: checksum mismatch: recorded %s at seq %llu, pages say %s",
                    argv[1], cli_hex64(rec.checksum, a), (unsigned long long)rec.seq,
                    cli_hex64(computed, b));
  if (rc)
    return cli_fail("verify", "%s: %s", argv[1], loom_strerror(rc));
  printf("ok: epoch %llu seq %llu checksum %s pages %llu\n",
         (unsigned long long)rec.epoch, (unsigned long long)rec.seq,
         cli_hex64(rec.checksum, a), (unsigned long long)rec.pages);
  return 0;
}

const cli_command cmd_inspect = {
    "inspect", "show an image directory's position",
    "inspect DIR [--json]", run_inspect};
const cli_command cmd_verify = {
    "verify", "recompute an image's checksum and check it against its position",
    "verify DIR", run_verify};
