#!/bin/sh
# pg_bench.sh: PostgreSQL 15 streaming replication, the side-by-side
# reference of issue 7 item 4. Starts its own primary and hot standby
# (Debian's postgresql-15, temporary data directories, 127.0.0.1, free
# ports), a table of 4,096 bytea values of 16 KiB (STORAGE EXTERNAL: not
# compressed), and for K = 1, 64, 1024 commits that change a run of 64
# random bytes at a random offset in K distinct random values (one UPDATE
# with overlay(), one transaction per commit, driven by pgbench).
#
# Per K it measures:
#   wal_bytes       pg_current_wal_lsn() difference over the commits / commits
#   commit_local    pgbench per-transaction latency p50 with
#                   synchronous_commit = local (the primary's WAL flush)
#   commit_on       the same with synchronous_commit = on and
#                   synchronous_standby_names = '*' (the standby's flush)
#   flush / replay  pg_stat_replication.flush_lag / replay_lag (PostgreSQL's
#                   own measure: time from the primary's WAL flush until the
#                   standby reports the WAL flushed / applied, i.e. visible),
#                   sampled every 50 ms while pgbench runs at a fixed rate
# and for K = 64 the highest rate the standby keeps up with (pgbench with no
# rate limit, 1 and 2 clients, synchronous_commit = local; kept up when the
# replay position is within 4 commits' WAL of the primary's at the end and
# replay_lag stayed under 1 s; kept_up=1 in the reference column).
# Everything is stopped and removed at the end (also on error).
#
# Usage: bench/pg_bench.sh [--quick]      (as root: runs postgres with runuser)
# Output: "RESULT name median min max unit reference ratio" lines.
set -eu
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/postgres" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15 >/dev/null
fi
W=$(mktemp -d /tmp/pg_bench.XXXXXX)
chown postgres "$W"
chmod 755 "$W"
P1=$((20000 + $$ % 20000)); P2=$((P1 + 1))
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$W/standby" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$W/primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
Q() { as_pg psql -X -q -A -t -h 127.0.0.1 -p "$1" -d postgres -c "$2"; }

as_pg "$PGBIN/initdb" -D "$W/primary" -A trust -U postgres >/dev/null
cat >> "$W/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $P1
unix_socket_directories = '$W'
wal_level = replica
max_wal_senders = 4
hot_standby = on
shared_buffers = 256MB
max_wal_size = 4GB
wal_receiver_status_interval = 1s
EOF
echo "host replication all 127.0.0.1/32 trust" >> "$W/primary/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >/dev/null
Q $P1 "CREATE EXTENSION pgcrypto" >/dev/null
Q $P1 "CREATE TABLE t (id int PRIMARY KEY, v bytea); ALTER TABLE t ALTER COLUMN v SET STORAGE EXTERNAL;"
Q $P1 "INSERT INTO t SELECT i, (SELECT string_agg(gen_random_bytes(1024), ''::bytea) FROM generate_series(1, 16) WHERE i >= 0) FROM generate_series(0, 4095) i;"
Q $P1 "VACUUM ANALYZE t" >/dev/null; Q $P1 "CHECKPOINT" >/dev/null
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p $P1 -D "$W/standby" -R -X stream >/dev/null
sed -i "s/^port = $P1/port = $P2/" "$W/standby/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/standby" -l "$W/standby.log" -w start >/dev/null
for i in $(seq 1 100); do
  [ "$(Q $P1 "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 1 ] && break
  sleep 0.1
done
echo "# PostgreSQL $(Q $P1 'SHOW server_version') primary :$P1, hot standby :$P2, table $(Q $P1 "SELECT pg_size_pretty(pg_total_relation_size('t'))")"

result() { # name median min max unit ref refname
  ratio=$(awk -v a="$2" -v r="$6" 'BEGIN { if (r > 0) printf "%.3g", a / r; else print 0 }')
  echo "RESULT $1 $2 $3 $4 $5 $7=$6 $ratio"
}
# p50/min/max of pgbench per-transaction latencies (us -> ms) in log files
lat_stats() { cat "$@" | awk '{ print $3 / 1000 }' | sort -n | awk '{ v[NR] = $1 } END { printf "%.4g %.4g %.4g", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
# median/min/max of interval values ('00:00:00.001234') in a file, in ms
int_stats() { grep -E '^[0-9]' "$1" | awk -F: '{ print ($1 * 3600 + $2 * 60 + $3) * 1000 }' | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-1 -1 -1"; else printf "%.4g %.4g %.4g", v[int((NR + 1) / 2)], v[1], v[NR] }'; }

for K in 1 64 1024; do
  cat > "$W/touch$K.sql" <<EOF
UPDATE t SET v = overlay(v PLACING gen_random_bytes(64) FROM (1 + floor(random() * 16320))::int) WHERE id IN (SELECT g FROM generate_series(0, 4095) g ORDER BY random() LIMIT $K);
EOF
  chown postgres "$W/touch$K.sql"
  case $K in 1) N=400 ; RATE=50 ;; 64) N=200 ; RATE=20 ;; *) N=20 ; RATE=2 ;; esac
  [ $QUICK = 1 ] && N=$((N / 4 + 5))
  SECS=$([ $QUICK = 1 ] && echo 4 || echo 10)
  PB="$PGBIN/pgbench"
  as_pg env PGOPTIONS="-c synchronous_commit=local" $PB -n -h 127.0.0.1 -p $P1 -f "$W/touch$K.sql" -t 10 postgres >/dev/null 2>&1 # warm up
  # WAL bytes and local commit latency
  L0=$(Q $P1 "SELECT pg_current_wal_lsn()")
  (cd "$W" && as_pg env PGOPTIONS="-c synchronous_commit=local" $PB -n -h 127.0.0.1 -p $P1 -f "$W/touch$K.sql" -t $N -l --log-prefix=loc$K postgres >/dev/null 2>&1)
  L1=$(Q $P1 "SELECT pg_current_wal_lsn()")
  WAL=$(Q $P1 "SELECT round(pg_wal_lsn_diff('$L1', '$L0') / $N)")
  result "pg_wal_bytes_per_commit_K$K" $WAL $WAL $WAL B $((K * 64)) changed_bytes
  [ $K = 64 ] && WAL64=$WAL
  set -- $(lat_stats "$W"/loc$K.*)
  result "pg_commit_local_p50_K$K" $1 $2 $3 ms 0 -
  LOCAL=$1
  # synchronous_commit = on, waiting for the standby's flush
  Q $P1 "ALTER SYSTEM SET synchronous_standby_names = '*'" >/dev/null; Q $P1 "SELECT pg_reload_conf()" >/dev/null; sleep 0.5
  (cd "$W" && as_pg env PGOPTIONS="-c synchronous_commit=on" $PB -n -h 127.0.0.1 -p $P1 -f "$W/touch$K.sql" -t $N -l --log-prefix=on$K postgres >/dev/null 2>&1)
  Q $P1 "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null; Q $P1 "SELECT pg_reload_conf()" >/dev/null; sleep 0.5
  set -- $(lat_stats "$W"/on$K.*)
  result "pg_commit_on_p50_K$K" $1 $2 $3 ms $LOCAL commit_local_p50
  # flush / replay lag at a fixed rate
  as_pg env PGOPTIONS="-c synchronous_commit=local" $PB -n -h 127.0.0.1 -p $P1 -f "$W/touch$K.sql" -R $RATE -T $SECS postgres > "$W/rate$K.out" 2>&1 &
  BG=$!
  sleep 1
  for i in $(seq 1 $(( (SECS - 2) * 20 ))); do echo "SELECT flush_lag, replay_lag FROM pg_stat_replication; SELECT pg_sleep(0.05);"; done > "$W/sample.sql"
  as_pg psql -X -q -A -t -F ' ' -h 127.0.0.1 -p $P1 -d postgres -f "$W/sample.sql" > "$W/lag$K.txt" 2>/dev/null
  wait $BG
  awk '{ print $1 }' "$W/lag$K.txt" > "$W/flush$K.txt"; awk '{ print $2 }' "$W/lag$K.txt" > "$W/replay$K.txt"
  set -- $(int_stats "$W/flush$K.txt")
  result "pg_flush_lag_K${K}_r$RATE" $1 $2 $3 ms $LOCAL commit_local_p50
  set -- $(int_stats "$W/replay$K.txt")
  result "pg_replay_lag_K${K}_r$RATE" $1 $2 $3 ms $LOCAL commit_local_p50
done

# Highest rate of K = 64 commits the standby keeps up with.
for C in 1 2; do
  SECS=$([ $QUICK = 1 ] && echo 5 || echo 15)
  for i in $(seq 1 $(( SECS * 10 ))); do echo "SELECT replay_lag FROM pg_stat_replication; SELECT pg_sleep(0.1);"; done > "$W/sample.sql"
  as_pg psql -X -q -A -t -h 127.0.0.1 -p $P1 -d postgres -f "$W/sample.sql" > "$W/maxlag$C.txt" 2>/dev/null &
  SP=$!
  TPS=$(as_pg env PGOPTIONS="-c synchronous_commit=local" $PGBIN/pgbench -n -h 127.0.0.1 -p $P1 -f "$W/touch64.sql" -c $C -j $C -T $SECS postgres 2>/dev/null | awk '/^tps/ { printf "%.1f", $3; exit }')
  BEHIND=$(Q $P1 "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication")
  wait $SP || true
  set -- $(int_stats "$W/maxlag$C.txt")
  echo "# K=64 unthrottled, $C client(s): $TPS commits/s, replay lag median $1 ms max $3 ms, standby $BEHIND bytes behind at the end"
  KEPT=$(awk -v b="$BEHIND" -v w="$WAL64" -v m="$3" 'BEGIN { print (b <= 4 * w && m < 1000) ? 1 : 0 }')
  result "pg_max_rate_K64_c$C" $TPS $TPS $TPS commits/s $KEPT kept_up
done
