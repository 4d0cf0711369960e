/*
 * metrics_process.c: the figures of the standard process_* metric families
 * (as the Prometheus client libraries export them), read from getrusage,
 * getrlimit and Linux's /proc/self. A figure that cannot be read is left
 * out (its "known" flag stays false): metrics never fail for it.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "server_internal.h"

/* Boot time in seconds since the epoch ("btime" of /proc/stat); 0 when
 * unknown. */
static long long boot_time(void)
{
  FILE *f = fopen("/proc/stat", "re");
  if (!f)
    return 0;
  char line[256];
  long long btime = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "btime %lld", &btime) == 1)
      break;
  fclose(f);
  return btime;
}

/* From /proc/self/stat: the start time after boot (field 22, clock ticks),
 * virtual size (23, bytes) and resident pages (24). */
static void proc_stat(http_process_figures *p)
{
  FILE *f = fopen("/proc/self/stat", "re");
  if (!f)
    return;
  char buf[1024];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *after_name = strrchr(buf, ')'); /* the name may hold spaces */
  unsigned long long start_ticks, vsize;
  long long rss;
  /* fields 3..21 skipped, then 22, 23, 24 */
  if (!after_name ||
      sscanf(after_name + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u"
                             " %*d %*d %*d %*d %*d %*d %llu %llu %lld",
             &start_ticks, &vsize, &rss) != 3)
    return;
  long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  long long btime = boot_time();
  p->virtual_bytes = vsize;
  p->resident_bytes = rss > 0 && page > 0 ? (uint64_t)rss * (uint64_t)page : 0;
  p->memory_known = true;
  if (btime > 0 && ticks > 0) {
    p->start_time_ns = btime * 1000000000LL +
                       (long long)(start_ticks / (unsigned long long)ticks) * 1000000000LL +
                       (long long)(start_ticks % (unsigned long long)ticks) * 1000000000LL / ticks;
  }
}

/* Entries of /proc/self/fd, less the one opendir holds; -1 when unknown. */
static long long open_fds(void)
{
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  long long n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n - 1;
}

void http_process_figures_read(http_process_figures *p)
{
  memset(p, 0, sizeof *p);
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    p->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    p->cpu_known = true;
  }
  proc_stat(p);
  long long fds = open_fds();
  struct rlimit rl;
  if (fds >= 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    p->open_fds = (uint64_t)fds;
    p->max_fds = rl.rlim_cur == RLIM_INFINITY ? 0 : (uint64_t)rl.rlim_cur;
    p->fds_known = true;
  }
}
