#!/usr/bin/env bash
# bench/offline.sh: pgferry's offline migration compared with pgcopydb, the raw-COPY floor
# and PostgreSQL's own tools.
#
# Starts two throwaway PostgreSQL 15 clusters (source and target), loads a ~1 GB database
# `bench` into the source (pgbench -i -s 40, a TOASTed table, secondary indexes), then, in
# one interleaved run of BENCH_ROUNDS rounds (every method once per round, the order rotated
# by one each round), times each method into a fresh empty target database:
#   pgferry   pgferry migration create --migration-option Migrate --jobs N (with its verification)
#   pgcopydb  pgcopydb clone --table-jobs N --index-jobs N (skipped, with a message, where
#             pgcopydb cannot be installed or run)
#   floor     the raw-COPY floor: pre-data; binary COPY of every table, source COPY TO STDOUT
#             piped into target COPY FROM STDIN, N tables at once; then pg_restore -j N
#             --section=post-data; one phase after the other (data and index phases timed)
#   dump      pg_dump -Fc bench | pg_restore -d bench                     (one stream)
#   dumpdir   pg_dump -Fd -j N -f DIR bench; pg_restore -j N -d bench DIR (both timed)
# and prints each method's median wall time, its CPU seconds (client process tree plus both
# servers), peak RSS, the ratios to pgcopydb and to the floor, pgferry's phases and a verdict
# against the targets: pgferry <= 1.0x pgcopydb, <= 1.10x the floor, pgferry's peak RSS < 150 MB.
# Every target is checked against the source (row counts, index count, a payload hash, a sum,
# the sequence's value).
#
# Usage: bash bench/offline.sh                               (scale 40, ~1 GB; 10 runs)
#        BENCH_SCALE=3 BENCH_ROUNDS=1 bash bench/offline.sh  (~100 MB; a quick check)
# Environment:
#   BENCH_SCALE    pgbench scale (default 40); the wide table has 5000 rows per scale unit
#   BENCH_ROUNDS   rounds of the interleaved run (default 2); each prints medians over them
#   BENCH_METHODS  the methods, comma- or space-separated (default
#                  pgferry,pgcopydb,floor,dump,dumpdir)
#   BENCH_JOBS     workers for pgferry --jobs, pgcopydb's table and index jobs, the floor's
#                  parallel COPYs and every -j (default: nproc)
#   BENCH_PG_BIN   PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_TMPDIR   where the clusters go (default /dev/shm when it has > 4 GiB free,
#                  else $TMPDIR or /tmp)
#   BENCH_KEEP=1   keep the work directory (clusters, logs, pgferry events) at the end
#   BENCH_STRICT=1 exit 3 when a target of the verdict is missed or could not be measured
#                  (with pgferry and pgcopydb or the floor among the methods)
#   BENCH_SKIP_BUILD=1  use the pgferry binary already built
#   BENCH_BASELINES=0   time pgferry only (BENCH_METHODS=pgferry: no ratio, no verdict)
# As root, the server programs run as the OS user `postgres` (PostgreSQL refuses root);
# the clients (psql, pgbench, pg_dump, pg_restore, pgcopydb, pgferry) run as the invoking user.
# The method functions run through `bash -c` (export -f) and cleanup through a trap:
# shellcheck disable=SC2317
set -euo pipefail

SCALE=${BENCH_SCALE:-40}
JOBS=${BENCH_JOBS:-$(nproc)}
ROUNDS=${BENCH_ROUNDS:-2}
if [ "${BENCH_BASELINES:-1}" = 0 ]; then
  METHODS=pgferry
else
  METHODS=${BENCH_METHODS:-pgferry,pgcopydb,floor,dump,dumpdir}
fi
METHODS=$(echo "$METHODS" | tr ',' ' ' | xargs)
PG_BIN=${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}
WIDE_ROWS=$((SCALE * 5000))
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PGFERRY=$TARGET_DIR/release/pgferry

die() { echo "offline.sh: $*" >&2; exit 1; }
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# Seconds between two $EPOCHREALTIME values, to 0.01 s.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
has_method() { [[ " $METHODS " == *" $1 "* ]]; }
# CPU counters from /proc/stat: "<busy, not niced> <niced> <total>" in clock ticks.
cpu_snap() {
  local _ u n sy i io irq sirq st rest
  read -r _ u n sy i io irq sirq st rest </proc/stat
  echo "$((u + sy + irq + sirq + st)) $n $((u + n + sy + i + io + irq + sirq + st))"
}
# Share of all cores busy between two snapshots, e.g. "97% (+2% niced)".
cpu_busy() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[3] - x[3]
    if (t > 0) printf "%.0f%% (+%.0f%% niced)", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t; else print "-" }'
}

[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer (got '$SCALE')"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "BENCH_JOBS must be a positive integer (got '$JOBS')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer (got '$ROUNDS')"
[ -n "$METHODS" ] || die "BENCH_METHODS is empty"
for m in $METHODS; do
  case $m in pgferry | pgcopydb | floor | dump | dumpdir) ;; *) die "unknown method '$m' in BENCH_METHODS (pgferry, pgcopydb, floor, dump, dumpdir)" ;; esac
done
for tool in initdb pg_ctl postgres psql pgbench pg_dump pg_restore; do
  [ -x "$PG_BIN/$tool" ] || die "$PG_BIN/$tool not found (apt-get install postgresql-15, or set BENCH_PG_BIN)"
done
if [ ! -x /usr/bin/time ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing GNU time (/usr/bin/time)"
    apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
  fi
  [ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is missing: apt-get install time"
fi
command -v jq >/dev/null || say "note: jq not found; pgferry's per-table breakdown is skipped"
# pgcopydb: Debian 12 packages 0.10. Installed here when missing (as root); skipped with a
# message where it cannot be installed (or, later, when its first run fails).
PGCOPYDB=
SKIPPED_PGCOPYDB=
if has_method pgcopydb; then
  if ! command -v pgcopydb >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing pgcopydb (apt-get install pgcopydb)"
    apt-get install -y -qq pgcopydb >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq pgcopydb >/dev/null 2>&1; } || true
  fi
  if command -v pgcopydb >/dev/null && pgcopydb --version >/dev/null 2>&1; then
    PGCOPYDB=$(command -v pgcopydb)
    say "$(pgcopydb --version 2>/dev/null | head -n 1)"
  else
    SKIPPED_PGCOPYDB="pgcopydb is not installed and could not be installed (apt-get install pgcopydb)"
    say "SKIPPING pgcopydb: $SKIPPED_PGCOPYDB"
  fi
fi

# The libpq environment must not redirect any connection of this script or its tools.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
  PGSERVICEFILE PGOPTIONS PGAPPNAME PGSSLMODE PGREQUIRESSL PGSSLROOTCERT PGTARGETSESSIONATTRS \
  PGCONNECT_TIMEOUT PGCLIENTENCODING PGTZ PGDATESTYLE

if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "as root the servers run as the OS user 'postgres', which does not exist"
  as_server() { runuser -u postgres -- "$@"; }
  ROOT=1
else
  as_server() { "$@"; }
  ROOT=0
fi

# ---------------------------------------------------------------------------------------
if has_method pgferry; then
  if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    say "building pgferry (release)"
    (cd "$REPO" && cargo build --release -p pgferry)
  fi
  [ -x "$PGFERRY" ] || die "$PGFERRY not found after the build (is CARGO_TARGET_DIR elsewhere?)"
fi

# ---------------------------------------------------------------------------------------
# Work directory: tmpfs when it has room (a data dir is ~1000 files and the WAL is large).
if [ -n "${BENCH_TMPDIR:-}" ]; then
  parent=$BENCH_TMPDIR
elif shm_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }') && [ "${shm_kb:-0}" -gt $((4 * 1024 * 1024)) ] && [ -w /dev/shm ]; then
  parent=/dev/shm
else
  parent=${TMPDIR:-/tmp}
fi
WORK=$(mktemp -d "$parent/pgferry-bench.XXXXXX")
chmod 755 "$WORK" # the server user must reach its cluster dir
BG_PIDS=()

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  touch "$WORK/stop" 2>/dev/null
  local pid
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for c in src tgt; do
    if [ -f "$WORK/$c/data/postmaster.pid" ]; then
      as_server "$PG_BIN/pg_ctl" -D "$WORK/$c/data" -m immediate -w stop >/dev/null 2>&1
    fi
  done
  if [ -n "${BENCH_KEEP:-}" ]; then
    echo "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOCALE=C
locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$' && LOCALE=C.UTF-8

init_cluster() {
  local dir=$WORK/$1
  mkdir -p "$dir"
  [ "$ROOT" = 1 ] && chown postgres: "$dir"
  as_server "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale="$LOCALE" \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb of the $1 cluster failed"; }
  # Speed over durability: a throwaway cluster never needs to survive a crash.
  cat >>"$dir/data/postgresql.conf" <<EOF

# bench/offline.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = replica
max_wal_size = 4GB
checkpoint_timeout = 30min
shared_buffers = 256MB
max_connections = 100
EOF
}

# Starts cluster $1 on a free loopback port, retrying when the port was taken meanwhile.
# Sets STARTED_PORT.
start_cluster() {
  local dir=$WORK/$1 port
  for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi # in use
    if as_server "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 120 start >/dev/null 2>&1; then
      STARTED_PORT=$port
      return 0
    fi
    grep -q "could not bind\|Address already in use" "$dir/server.log" 2>/dev/null || break
  done
  tail -n 30 "$dir/server.log" >&2 || true
  die "cannot start the $1 cluster"
}

# sq PORT DB [psql args…]: psql, unaligned, tuples only, stop on error.
sq() {
  local port=$1 db=$2
  shift 2
  "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

say "starting two PostgreSQL clusters in $WORK ($("$PG_BIN/postgres" --version))"
init_cluster src
init_cluster tgt
start_cluster src
SP=$STARTED_PORT
start_cluster tgt
TP=$STARTED_PORT
say "source 127.0.0.1:$SP, target 127.0.0.1:$TP"

# ---------------------------------------------------------------------------------------
say "loading the source database bench: pgbench -i -s $SCALE, wide table of $WIDE_ROWS rows"
load_start=$EPOCHREALTIME
sq "$SP" postgres -c "create database bench"
"$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$SP" -U postgres bench >"$WORK/pgbench.log" 2>&1 ||
  { cat "$WORK/pgbench.log" >&2; die "pgbench -i failed"; }
grep -v ' of [0-9]* tuples (' "$WORK/pgbench.log" | sed 's/^/    /' || true
# The payload is 64 independent md5s (2 kB of random hex): pglz cannot compress it, so every
# value is stored out of line in the TOAST table (a repeated md5 would compress to ~100
# bytes and stay inline).
sq "$SP" bench <<SQL
create table wide (
  id bigserial primary key,
  grp integer not null,
  created timestamptz not null,
  payload text not null
);
insert into wide (grp, created, payload)
select g % 1000,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
       (select string_agg(md5(g::text || ':' || i::text || ':' || random()::text), '') from generate_series(1, 64) i)
  from generate_series(1, $WIDE_ROWS) g;
create index pgbench_accounts_bid on pgbench_accounts (bid);
create index pgbench_accounts_abalance on pgbench_accounts (abalance);
create index wide_payload_prefix on wide (left(payload, 16));
vacuum analyze wide;
checkpoint;
SQL
say "loaded in $(elapsed "$load_start" "$EPOCHREALTIME") s"
DB_SIZE=$(sq "$SP" bench -c "select pg_size_pretty(pg_database_size('bench'))")
DB_BYTES=$(sq "$SP" bench -c "select pg_database_size('bench')")
sq "$SP" bench -F ' ' -c "
  select 'database bench: ' || pg_size_pretty(pg_database_size('bench'))
      || ' (pgbench_accounts ' || pg_size_pretty(pg_total_relation_size('pgbench_accounts'))
      || ', wide ' || pg_size_pretty(pg_total_relation_size('wide'))
      || ' of which TOAST ' || pg_size_pretty(pg_total_relation_size(reltoastrelid)) || ')'
    from pg_class where oid = 'wide'::regclass"

# What a correct copy must reproduce: row counts, the number of indexes, a payload hash, a
# sum, and the value of wide's sequence.
SIGNATURE_SQL="select 'branches=' || (select count(*) from pgbench_branches)
  || ' tellers=' || (select count(*) from pgbench_tellers)
  || ' accounts=' || (select count(*) from pgbench_accounts)
  || ' history=' || (select count(*) from pgbench_history)
  || ' wide=' || (select count(*) from wide)
  || ' indexes=' || (select count(*) from pg_indexes where schemaname = 'public')
  || ' payload_hash=' || (select sum(hashtext(payload)::numeric) from wide)
  || ' abalance_sum=' || (select sum(abalance) from pgbench_accounts)
  || ' wide_id_seq=' || (select coalesce(last_value::text, 'unset') from pg_sequences where sequencename = 'wide_id_seq')"
SOURCE_SIGNATURE=$(sq "$SP" bench -c "$SIGNATURE_SQL")
say "source: $SOURCE_SIGNATURE"
expected="branches=$SCALE tellers=$((SCALE * 10)) accounts=$((SCALE * 100000)) history=0 wide=$WIDE_ROWS indexes=7 "
[[ $SOURCE_SIGNATURE == "$expected"* ]] || die "unexpected source contents: $SOURCE_SIGNATURE (expected $expected…)"


# Each run starts from no target database and freshly checkpointed clusters, so no run pays
# for the previous one's checkpoint.
reset_target() {
  say "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the timings)"
  sq "$TP" postgres -c "set client_min_messages = warning" -c "drop database if exists bench with (force)"
  sq "$TP" postgres -c "checkpoint"
  sq "$SP" postgres -c "checkpoint"
}

FAILED=0
CHECK_RESULT=
verify_target() { # $1: label; sets CHECK_RESULT to exact or DIFFERS
  local sig
  sig=$(sq "$TP" bench -c "$SIGNATURE_SQL" 2>&1) || sig="(query failed: $sig)"
  if [ "$sig" = "$SOURCE_SIGNATURE" ]; then
    say "$1: target matches the source exactly"
    CHECK_RESULT=exact
  else
    say "$1: TARGET DIFFERS from the source"
    echo "    source: $SOURCE_SIGNATURE"
    echo "    target: $sig"
    CHECK_RESULT=DIFFERS
    FAILED=1
  fi
}

mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# All descendants of $1 (via /proc/PID/task/TID/children).
descendants() {
  local pid=$1 f kid kids
  for f in /proc/"$pid"/task/*/children; do
    read -r -a kids <"$f" 2>/dev/null || true
    for kid in "${kids[@]}"; do
      echo "$kid"
      descendants "$kid"
    done
  done 2>/dev/null
}

# Samples process $1 and its descendants every 100 ms until $1 exits; prints
# "<own VmHWM kB> <max tree VmRSS kB>". VmHWM is the kernel's own high-water mark of the
# process (of its last exec'd program), so sampling can only miss growth in the last 100 ms
# before exit. The tree sum adds its children (pg_dump, pg_restore, psql, pgcopydb's workers).
sample_rss() {
  local pid=$1 hwm=0 tree=0 sum k v rest p
  while [ -e "/proc/$pid" ]; do
    sum=0
    for p in "$pid" $(descendants "$pid"); do
      while read -r k v rest; do
        case $k in
          VmHWM:) [ "$p" = "$pid" ] && [ "$v" -gt "$hwm" ] && hwm=$v ;;
          VmRSS:) sum=$((sum + v)) ;;
        esac
      done 2>/dev/null <"/proc/$p/status" || true
    done
    [ "$sum" -gt "$tree" ] && tree=$sum
    sleep 0.1
  done
  echo "$hwm $tree"
}

# CPU seconds used so far by both clusters: every postmaster's own user+sys time, the
# user+sys time of the children it has reaped (cutime+cstime: backends, parallel workers and
# autovacuum workers that exited), and the user+sys time of its live children (backends,
# checkpointer, walwriter…). The difference of two readings is the servers' CPU in between:
# a child that exits in between moves its whole time from "live" to "reaped".
CLK_TCK=$(getconf CLK_TCK)
server_cpu() {
  local c pm kids=()
  for c in src tgt; do
    read -r pm <"$WORK/$c/data/postmaster.pid"
    read -r -a kids <"/proc/$pm/task/$pm/children" 2>/dev/null || kids=()
    # Children first, then the postmaster: a child that exits between the two reads is then
    # counted twice (not lost); the readings are taken when the servers are idle.
    for p in "${kids[@]}" "$pm"; do cat "/proc/$p/stat" 2>/dev/null || true; done
  done | awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15 } END { printf "%.2f", t / hz }'
}

# Every second until $1 exists: the active statements of both clusters, to see the phases.
sample_activity() {
  local stop=$1 side port q
  local sql="select coalesce(string_agg(datname || ': ' || left(regexp_replace(query, '\s+', ' ', 'g'), 90), ' | '), '-')
               from pg_stat_activity where state = 'active' and backend_type = 'client backend' and pid <> pg_backend_pid()"
  while [ ! -e "$stop" ]; do
    for side in "S:$SP" "T:$TP"; do
      q=$(sq "${side#*:}" postgres -c "$sql" 2>/dev/null) || q='?'
      printf '%s %s %s\n' "$EPOCHREALTIME" "${side%%:*}" "$q"
    done
    printf '%s C %s\n' "$EPOCHREALTIME" "$(cpu_snap)"
    sleep 1
  done
}

# Prefixes each line with $EPOCHREALTIME.
stamp() { local line; while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

if has_method pgferry; then
  export PGFERRY_CACHE_DIR=$WORK/pgferry-cache
  export PGFERRY_PLUGINS=$WORK/plugins.toml # no external plugins, whatever the user configured
  : >"$PGFERRY_PLUGINS"
  say "warming pgferry's compiled-plugin cache (a first run on a machine compiles the built-in plugins once)"
  /usr/bin/time -f '%e %M' -o "$WORK/warmup.time" "$PGFERRY" --state-dir "$WORK/warmup-state" plugin list >/dev/null
  read -r WARM_S WARM_KB <"$WORK/warmup.time"
  say "plugin compilation: ${WARM_S} s, peak RSS $(mb "$WARM_KB") MB (cached in PGFERRY_CACHE_DIR afterwards)"
fi

# ---------------------------------------------------------------------------------------
# The methods. Each runs as `bash -c method_NAME` under GNU time, in its own run directory
# $RUN_DIR, and starts with no database bench on the target (all but pgferry create it, timed).
# mark LABEL appends "<time> LABEL" to $RUN_DIR/marks: the end of a phase.
mark() { printf '%s %s\n' "$EPOCHREALTIME" "$1" >>"$RUN_DIR/marks"; }

# (pgferry) its offline migration, with its own verification.
method_pgferry() {
  exec "$PGFERRY" --state-dir "$RUN_DIR/state" --output json \
    migration create --migration-name "bench-$RUN_ID" --properties "$RUN_DIR/properties.json" \
    --target "127.0.0.1:$TP" --migration-option Migrate --jobs "$JOBS" --pg-bin "$PG_BIN"
}

# (pgcopydb) pgcopydb clone, $JOBS table jobs and $JOBS index jobs. What it needs here, and
# why (pgcopydb 0.10, tried on these clusters):
#   --dir DIR   a fresh work directory per run: without --dir it uses one fixed directory
#               under $TMPDIR, and a directory left by a completed run makes it refuse to
#               start ("Please use --restart to allow for removing files that belong to a
#               completed previous run").
#   the target database must exist: pgcopydb restores into it but does not create it, and
#               fails with pg_restore's "database "bench" does not exist" otherwise (the
#               CREATE DATABASE is timed, as for dump, dumpdir and the floor).
#   PATH        it runs pg_dump and pg_restore found on PATH; Debian's /usr/bin ones are
#               wrappers that pick the newest installed version, so the clusters' own
#               binaries go first.
# No other flag is needed: it connects as the superuser postgres on both sides, and the clone
# also succeeds without --no-owner, --no-acl or --skip-extensions (tried). pgcopydb also runs
# VACUUM ANALYZE on every table and resets the sequences; both are in its time.
method_pgcopydb() {
  sq "$TP" postgres -c "create database bench"
  PATH="$PG_BIN:$PATH" exec "$PGCOPYDB" clone \
    --source "postgres://postgres@127.0.0.1:$SP/bench" \
    --target "postgres://postgres@127.0.0.1:$TP/bench" \
    --table-jobs "$JOBS" --index-jobs "$JOBS" --dir "$RUN_DIR/pgcopydb"
}

# (floor) what any COPY-based tool must at least do, one phase after the other:
#   schema: pg_dump -Fc --schema-only to a file, pg_restore --section=pre-data;
#   data:   binary COPY of every table, source COPY TO STDOUT piped into target COPY FROM
#           STDIN (two psql), $JOBS tables at once, the biggest (heap + TOAST) first; then
#           setval of every sequence to the source's value;
#   index:  pg_restore -j $JOBS --section=post-data (primary keys, indexes, constraints).
copy_table() { # schema-qualified, quoted table name
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SP" -U postgres -d bench \
    -c "copy $1 to stdout (format binary)" |
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$TP" -U postgres -d bench \
      -c "copy $1 from stdin (format binary)"
}
method_floor() {
  local t running=0 rc=0
  sq "$TP" postgres -c "create database bench"
  "$PG_BIN/pg_dump" -Fc --schema-only -f "$RUN_DIR/schema.dump" -h 127.0.0.1 -p "$SP" -U postgres bench
  "$PG_BIN/pg_restore" --section=pre-data -h 127.0.0.1 -p "$TP" -U postgres -d bench "$RUN_DIR/schema.dump"
  mark schema
  sq "$SP" bench -c "select format('%I.%I', n.nspname, c.relname)
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname not like 'pg\_toast%'
     order by pg_table_size(c.oid) desc" >"$RUN_DIR/tables"
  while read -r t; do
    if [ "$running" -ge "$JOBS" ]; then
      wait -n || rc=1
      running=$((running - 1))
    fi
    copy_table "$t" &
    running=$((running + 1))
  done <"$RUN_DIR/tables"
  while [ "$running" -gt 0 ]; do
    wait -n || rc=1
    running=$((running - 1))
  done
  [ "$rc" = 0 ] || { echo "a table's COPY failed" >&2; return 1; }
  sq "$SP" bench -c "select format('select setval(%L, %s, %L);', format('%I.%I', schemaname, sequencename),
                                   coalesce(last_value, start_value), last_value is not null)
                       from pg_sequences" | sq "$TP" bench >/dev/null
  mark data
  "$PG_BIN/pg_restore" -j "$JOBS" --section=post-data -h 127.0.0.1 -p "$TP" -U postgres -d bench "$RUN_DIR/schema.dump"
  mark index
}

# (dump) pg_dump -Fc | pg_restore: one stream.
method_dump() {
  sq "$TP" postgres -c "create database bench"
  "$PG_BIN/pg_dump" -Fc -h 127.0.0.1 -p "$SP" -U postgres bench |
    "$PG_BIN/pg_restore" -h 127.0.0.1 -p "$TP" -U postgres -d bench
}

# (dumpdir) pg_dump -Fd -j N to a directory, then pg_restore -j N; both timed.
method_dumpdir() {
  "$PG_BIN/pg_dump" -Fd -j "$JOBS" -f "$RUN_DIR/dump" -h 127.0.0.1 -p "$SP" -U postgres bench
  mark dump
  sq "$TP" postgres -c "create database bench"
  "$PG_BIN/pg_restore" -j "$JOBS" -h 127.0.0.1 -p "$TP" -U postgres -d bench "$RUN_DIR/dump"
  mark restore
}

declare -A LABEL=(
  [pgferry]="pgferry --jobs $JOBS"
  [pgcopydb]="pgcopydb clone $JOBS+$JOBS jobs"
  [floor]="floor: COPY -j$JOBS, post-data -j$JOBS"
  [dump]="pg_dump -Fc | pg_restore"
  [dumpdir]="pg_dump -Fd -j$JOBS + pg_restore -j$JOBS"
)
export -f sq mark copy_table method_pgferry method_pgcopydb method_floor method_dump method_dumpdir
export PG_BIN SP TP JOBS PGFERRY PGCOPYDB

# ---------------------------------------------------------------------------------------
# pgferry's phases, from its progress events (stderr, --output json, stamped on arrival)
# and the activity log sampled once a second. $A is the run directory.
event_at() { awk -v s="\"stage\":\"$1\"" 'index($0, s) { print $1; exit }' "$A/events.log"; }
# CPU busy between the activity log's first sample at or after $1 and its last at or before $2.
phase_cpu() {
  awk -v from="$1" -v to="$2" '$2 == "C" && $1 >= from && first == "" { first = $3 " " $4 " " $5 }
    $2 == "C" && $1 <= to { last = $3 " " $4 " " $5 }
    END { split(first, x, " "); split(last, y, " "); t = y[3] - x[3]
      if (first != "" && t > 0) printf "CPU %3.0f%%", 100 * (y[1] - x[1]) / t; else printf "CPU    -" }' "$A/activity.log"
}
print_phase() { # label from to note
  if [ -n "$2" ] && [ -n "$3" ]; then
    printf '    %-50s %7s s  %s  %s\n' "$1" "$(elapsed "$2" "$3")" "$(phase_cpu "$2" "$3")" "$4"
  fi
}
pgferry_phases() { # $1 start, $2 end; sets PH_DATA, PH_INDEX and prints the phases
  local a_start=$1 a_end=$2 t_created t_schema t_copied t_completed t_verify
  t_created=$(event_at Created)
  t_schema=$(event_at SchemaRestored)
  t_copied=$(event_at DataCopied)
  t_completed=$(event_at Completed)
  t_verify=$(awk 'index($0, "\"event\":\"VerificationStarted\"") { print $1; exit }' "$A/events.log")
  PH_DATA=- PH_INDEX=-
  [ -n "$t_schema" ] && [ -n "$t_copied" ] && PH_DATA=$(elapsed "$t_schema" "$t_copied")
  [ -n "$t_copied" ] && [ -n "$t_verify" ] && PH_INDEX=$(elapsed "$t_copied" "$t_verify")
  print_phase "start-up, inventory, checks, create database" "$a_start" "$t_created" "(start → Created)"
  print_phase "schema: pg_dump | pg_restore --section=pre-data" "$t_created" "$t_schema" "(Created → SchemaRestored)"
  print_phase "data: COPY binary, $JOBS workers" "$t_schema" "$t_copied" "(SchemaRestored → DataCopied)"
  if [ -n "$t_verify" ]; then
    print_phase "post-data: pg_restore -j $JOBS (indexes, keys), sequences" "$t_copied" "$t_verify" "(DataCopied → VerificationStarted)"
    print_phase "verification: COPY digests of the target's tables" "$t_verify" "$t_completed" "(→ Completed)"
  else
    print_phase "post-data, sequences, verification" "$t_copied" "$t_completed" "(DataCopied → Completed)"
  fi
  print_phase "finishing (state store), exit" "$t_completed" "$a_end" "(Completed → exit)"
  if command -v jq >/dev/null && [ -n "$t_schema" ]; then
    echo "  tables copied (parts, rows, binary COPY MB, longest part; when its last part finished, from the data phase's start):"
    awk 'substr($2, 1, 1) == "{" { ts = $1; sub(/^[^ ]* /, ""); print "{\"ts\":" ts ",\"e\":" $0 "}" }' "$A/events.log" |
      jq -rs --argjson t0 "$t_schema" '
      [ .[] | select(.e.event == "TableCopied") | .e.table + { ts } ]
      | group_by(.schema + "." + .name)
      | map({ t: (.[0].schema + "." + .[0].name), parts: length, rows: (map(.rows) | add),
              bytes: (map(.bytes) | add), s: (map(.seconds) | max), done: ((map(.ts) | max) - $t0) })
      | sort_by(.done) | .[] | [.t, .parts, .rows, .bytes, .s, .done] | @tsv' 2>/dev/null |
      awk -F '\t' '{ printf "    %-26s %2d part(s) %9d rows %5.0f MB %6.1f s  done at +%.1f s\n", $1, $2, $3, $4 / 1048576, $5, $6 }' || true
  fi
}
mark_at() { awk -v l="$1" '$2 == l { print $1; exit }' "$2/marks" 2>/dev/null; }

# Results of each run, keyed "method,round" (read through `values`' nameref).
# shellcheck disable=SC2034
declare -A R_WALL R_CCPU R_SCPU R_RSS R_TREE R_HWM R_DATA R_INDEX R_CHECK
declare -A PGFERRY_PHASES
SKIPPED_PGCOPYDB=${SKIPPED_PGCOPYDB:-}

# run_method NAME ROUND
run_method() {
  local name=$1 round=$2 dir rc=0 err start end c0 c1 s0 s1 tpid cpid='' rss_pid='' stamp_pid='' activity_pid=''
  local wall ccpu scpu rss hwm tree busy detail t_schema t_data t_index t_dump _ u s
  dir=$WORK/runs/r$round-$name
  mkdir -p "$dir"
  reset_target
  say "round $round: ${LABEL[$name]}"
  err=$dir/stderr.log
  BG_PIDS=()
  if [ "$name" = pgferry ]; then
    cat >"$dir/properties.json" <<EOF
{"properties": {
  "SourceDBServerResourceId": "127.0.0.1:$SP@postgres",
  "DBsToMigrate": ["bench"],
  "sourceType": "OnPremises",
  "OverwriteDBsInTarget": "true"
}}
EOF
    mkfifo "$dir/stderr.fifo"
    stamp <"$dir/stderr.fifo" >"$dir/events.log" &
    stamp_pid=$!
    BG_PIDS+=("$stamp_pid")
    sample_activity "$dir/stop" >"$dir/activity.log" &
    activity_pid=$!
    BG_PIDS+=("$activity_pid")
    err=$dir/stderr.fifo
  fi
  sleep 0.3 # the reset's own sessions have exited
  s0=$(server_cpu)
  c0=$(cpu_snap)
  start=$EPOCHREALTIME
  RUN_DIR=$dir RUN_ID="$$-$round" /usr/bin/time -f '%e %U %S %M' -o "$dir/time" \
    bash -c "set -euo pipefail; method_$name" >"$dir/stdout.log" 2>"$err" &
  tpid=$!
  BG_PIDS+=("$tpid")
  while [ -z "$cpid" ] && kill -0 "$tpid" 2>/dev/null; do
    cpid=$(pgrep -P "$tpid" | head -n 1) || true
    [ -n "$cpid" ] || sleep 0.01
  done
  if [ -n "$cpid" ]; then
    sample_rss "$cpid" >"$dir/rss.txt" &
    rss_pid=$!
    BG_PIDS+=("$rss_pid")
  fi
  wait "$tpid" || rc=$?
  end=$EPOCHREALTIME
  c1=$(cpu_snap)
  sleep 0.5 # the servers reap the method's backends
  s1=$(server_cpu)
  touch "$dir/stop"
  [ -n "$stamp_pid" ] && { wait "$stamp_pid" || true; }
  [ -n "$rss_pid" ] && { wait "$rss_pid" || true; }
  [ -n "$activity_pid" ] && { wait "$activity_pid" || true; }
  BG_PIDS=() # all ended: nothing of theirs is left for the cleanup to stop
  wall=$(elapsed "$start" "$end")
  busy=$(cpu_busy "$c0" "$c1")
  # GNU time: elapsed, user, system, max RSS (kB) of the largest process of the tree.
  read -r _ u s rss < <(tail -n 1 "$dir/time")
  ccpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
  scpu=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }')
  read -r hwm tree <"$dir/rss.txt" 2>/dev/null || { hwm=0; tree=0; }
  if [ "$rc" -ne 0 ]; then
    if [ "$name" = pgcopydb ]; then
      say "round $round: pgcopydb FAILED (exit $rc) after $wall s: it cannot be run here, so it is skipped from now on; its last lines:"
      tail -n 25 "$err" | sed 's/^/    /'
      SKIPPED_PGCOPYDB="failed to run (exit $rc, see above)"
      R_CHECK[$name,$round]=FAILED
      return 0
    fi
    say "round $round: ${LABEL[$name]} FAILED with exit code $rc after $wall s; its output:"
    if [ "$name" = pgferry ]; then
      cat "$dir/stdout.log"
      sed 's/^[0-9.]* //' "$dir/events.log" | grep -v '^{"event"' | tail -n 40
    else
      tail -n 40 "$err"
    fi
    FAILED=1
    R_CHECK[$name,$round]=FAILED
    return 0
  fi
  verify_target "round $round: ${LABEL[$name]}"
  # shellcheck disable=SC2034 # read through `values`' nameref
  {
    R_CHECK[$name,$round]=$CHECK_RESULT
    R_WALL[$name,$round]=$wall
    R_CCPU[$name,$round]=$ccpu
    R_SCPU[$name,$round]=$scpu
    R_RSS[$name,$round]=$rss
    R_TREE[$name,$round]=$tree
    R_HWM[$name,$round]=$hwm
  }
  detail=
  case $name in
    pgferry)
      A=$dir
      pgferry_phases "$start" "$end" >"$dir/phases.txt" # sets PH_DATA, PH_INDEX
      PGFERRY_PHASES[$round]=$(cat "$dir/phases.txt")
      R_DATA[$name,$round]=$PH_DATA
      R_INDEX[$name,$round]=$PH_INDEX
      detail=" (data $PH_DATA s, post-data $PH_INDEX s)"
      ;;
    floor)
      t_schema=$(mark_at schema "$dir")
      t_data=$(mark_at data "$dir")
      t_index=$(mark_at index "$dir")
      R_DATA[$name,$round]=$(elapsed "$t_schema" "$t_data")
      R_INDEX[$name,$round]=$(elapsed "$t_data" "$t_index")
      detail=" (schema $(elapsed "$start" "$t_schema") s, data ${R_DATA[$name,$round]} s, post-data ${R_INDEX[$name,$round]} s)"
      ;;
    dumpdir)
      t_dump=$(mark_at dump "$dir")
      detail=" (dump $(elapsed "$start" "$t_dump") s → $(du -sh "$dir/dump" 2>/dev/null | cut -f1), restore $(elapsed "$t_dump" "$end") s)"
      rm -rf "$dir/dump"
      ;;
  esac
  say "round $round: ${LABEL[$name]}: $wall s$detail; CPU $ccpu s client + $scpu s servers; peak RSS $(mb "$rss") MB (tree $(mb "$tree") MB); machine $busy busy"
}

# ---------------------------------------------------------------------------------------
# One interleaved run: every method once per round, the order rotated by one each round, so
# that a drift of the machine's speed spreads over all methods.
read -r -a ORDER <<<"$METHODS"
say "methods: ${ORDER[*]}; $ROUNDS round(s), order rotated each round"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((i = 0; i < ${#ORDER[@]}; i++)); do
    name=${ORDER[$(((i + round - 1) % ${#ORDER[@]}))]}
    if [ "$name" = pgcopydb ] && [ -n "$SKIPPED_PGCOPYDB" ]; then continue; fi
    run_method "$name" "$round"
  done
done

# ---------------------------------------------------------------------------------------
# Median of the numbers given (empty: -).
median() {
  printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g |
    awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f", a[(NR + 1) / 2]; else printf "%.2f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
maxof() { printf '%s\n' "$@" | { grep -E '^[0-9]+$' || true; } | sort -n | tail -n 1; }
# values NAME ARRAY: the method's values of every round
values() {
  local -n arr=$2
  local r
  for ((r = 1; r <= ROUNDS; r++)); do [ -n "${arr[$1,$r]:-}" ] && echo "${arr[$1,$r]}"; done
  return 0
}
declare -A M_WALL M_CPU M_CCPU M_SCPU M_RSS M_TREE M_DATA M_INDEX M_CHECK
for name in "${ORDER[@]}"; do
  mapfile -t w < <(values "$name" R_WALL)
  mapfile -t cc < <(values "$name" R_CCPU)
  mapfile -t sc < <(values "$name" R_SCPU)
  mapfile -t d < <(values "$name" R_DATA)
  mapfile -t ix < <(values "$name" R_INDEX)
  mapfile -t rs < <(values "$name" R_RSS)
  mapfile -t tr < <(values "$name" R_TREE)
  mapfile -t ck < <(values "$name" R_CHECK)
  tot=()
  for ((j = 0; j < ${#cc[@]}; j++)); do tot+=("$(awk -v a="${cc[$j]}" -v b="${sc[$j]}" 'BEGIN { printf "%.2f", a + b }')"); done
  M_WALL[$name]=$(median "${w[@]}")
  M_CCPU[$name]=$(median "${cc[@]}")
  M_SCPU[$name]=$(median "${sc[@]}")
  M_CPU[$name]=$(median "${tot[@]}")
  M_DATA[$name]=$(median "${d[@]}")
  M_INDEX[$name]=$(median "${ix[@]}")
  M_RSS[$name]=$(maxof "${rs[@]}")
  M_TREE[$name]=$(maxof "${tr[@]}")
  if [ ${#ck[@]} -eq 0 ]; then
    M_CHECK[$name]="not run"
  elif printf '%s\n' "${ck[@]}" | grep -qv '^exact$'; then
    M_CHECK[$name]="$(printf '%s\n' "${ck[@]}" | sort | uniq -c | awk '{ printf "%s%s×%s", s, $1, $2; s = ", " }')"
  else
    M_CHECK[$name]="exact ×${#ck[@]}"
  fi
done
# ratio X Y: X / Y as "1.23x", or - when either is missing
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x + 0 > 0 && y + 0 > 0) printf "%.2fx", x / y; else print "-" }'; }
has_run() { [ "${M_WALL[$1]:-"-"}" != - ]; }

echo
echo "pgferry offline benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }'), scale $SCALE, database bench $DB_SIZE, clusters on $parent"
echo "$ROUNDS round(s), every method once per round, order rotated; medians over the rounds; --jobs/-j $JOBS"
row() { printf '%-36s %7s %6s %6s  %7s %7s %7s  %6s %6s  %9s %9s  %s\n' "$@"; }
row "method" "wall s" "data" "index" "CPU-s" "client" "servers" "RSS MB" "tree" "÷pgcopydb" "÷floor" "check"
for name in "${ORDER[@]}"; do
  label=${LABEL[$name]}
  if [ "$name" = pgcopydb ] && [ -n "$SKIPPED_PGCOPYDB" ] && ! has_run pgcopydb; then
    printf '%-36s skipped: %s\n' "$label" "$SKIPPED_PGCOPYDB"
    continue
  fi
  row "$label" "${M_WALL[$name]}" "${M_DATA[$name]}" "${M_INDEX[$name]}" "${M_CPU[$name]}" "${M_CCPU[$name]}" "${M_SCPU[$name]}" \
    "$(mb "${M_RSS[$name]:-0}")" "$(mb "${M_TREE[$name]:-0}")" \
    "$(ratio "${M_WALL[$name]}" "${M_WALL[pgcopydb]:-}")" "$(ratio "${M_WALL[$name]}" "${M_WALL[floor]:-}")" "${M_CHECK[$name]}"
done
echo "  wall s: median wall time. data / index: the data phase (after pre-data: COPY, sequences) and"
echo "  the post-data phase (indexes, keys), for pgferry from its events (its verification after"
echo "  that is in the wall time only), for the floor from its own marks."
echo "  CPU-s = client + servers, each the median over the rounds. client: user+sys of the method's"
echo "  whole process tree (GNU time: the tool and every child it waited for: pg_dump, pg_restore,"
echo "  psql, pgcopydb's workers). servers: user+sys of both PostgreSQL clusters, from /proc of each"
echo "  postmaster and its children (live, and reaped via cutime/cstime) before and after the run."
echo "  RSS MB: the largest single process of the client tree (GNU time, ru_maxrss), max over the"
echo "  rounds; tree: the largest sampled sum of VmRSS over the tree (every 100 ms)."
echo "  ÷pgcopydb, ÷floor: the method's median wall time over theirs."
if has_run pgferry; then
  echo "  throughput of pgferry: $(awk -v b="$DB_BYTES" -v s="${M_WALL[pgferry]}" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s }') MB/s of database size (median wall time)"
  echo "  pgferry's CPU-s ratio: $(ratio "${M_CPU[pgferry]}" "${M_CPU[pgcopydb]:-}") of pgcopydb, $(ratio "${M_CPU[pgferry]}" "${M_CPU[floor]:-}") of the floor"
  for ((r = 1; r <= ROUNDS; r++)); do
    if [ -n "${PGFERRY_PHASES[$r]:-}" ]; then
      echo "  pgferry's phases, round $r ($(mb "${R_HWM[pgferry,$r]:-0}") MB peak RSS of pgferry itself, VmHWM):"
      echo "${PGFERRY_PHASES[$r]}"
    fi
  done
fi

# Verdict: pgferry ≤ 1.0× pgcopydb, ≤ 1.10× the floor (median wall times), peak RSS of
# pgferry itself (VmHWM, the highest of the rounds) < 150 MB. A target that could not be
# measured (method skipped or failed) is "not measured", which BENCH_STRICT counts as missed.
verdict_part() { # label value limit
  awk -v l="$1" -v v="$2" -v m="$3" 'BEGIN { if (v == "-" || v == "") printf "%s: not measured", l
    else printf "%s %s ≤ %sx: %s", l, v, m, (substr(v, 1, length(v) - 1) + 0 <= m + 0) ? "PASS" : "FAIL" }'
}
ALL_OK=0
if ! has_method pgferry; then
  echo "verdict: none (pgferry was not among the methods)"
elif ! has_run pgferry; then
  echo "verdict: FAIL — pgferry did not succeed"
elif ! has_method pgcopydb && ! has_method floor; then
  mapfile -t hw < <(values pgferry R_HWM)
  echo "verdict: none (neither pgcopydb nor the floor was among the methods); pgferry's peak RSS $(mb "$(maxof "${hw[@]}")") MB"
else
  mapfile -t hw < <(values pgferry R_HWM)
  HWM_MAX=$(maxof "${hw[@]}")
  v1=$(verdict_part "vs pgcopydb" "$(ratio "${M_WALL[pgferry]}" "${M_WALL[pgcopydb]:-}")" 1.0)
  v2=$(verdict_part "vs floor" "$(ratio "${M_WALL[pgferry]}" "${M_WALL[floor]:-}")" 1.10)
  v3="peak RSS $(mb "${HWM_MAX:-0}") MB < 150 MB: $(awk -v k="${HWM_MAX:-0}" 'BEGIN { print (k > 0 && k < 150 * 1024) ? "PASS" : "FAIL" }')"
  verdict="$v1; $v2; $v3"
  if [[ $verdict != *FAIL* ]] && [[ $verdict != *"not measured"* ]] && [ "${M_CHECK[pgferry]}" = "exact ×$ROUNDS" ]; then
    ALL_OK=1
    echo "verdict: PASS — $verdict"
  elif [ "${M_CHECK[pgferry]}" != "exact ×$ROUNDS" ]; then
    echo "verdict: FAIL — pgferry's runs: ${M_CHECK[pgferry]}; $verdict"
  elif [[ $verdict != *FAIL* ]]; then
    echo "verdict: INCOMPLETE — $verdict"
  else
    echo "verdict: FAIL — $verdict"
  fi
fi

[ "$FAILED" = 0 ] || exit 1
if [ -n "${BENCH_STRICT:-}" ] && has_method pgferry && { has_method pgcopydb || has_method floor; } && [ "$ALL_OK" != 1 ]; then exit 3; fi
exit 0
