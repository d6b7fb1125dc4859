#!/usr/bin/env bash
# bench/offline.sh: pgferry's offline migration compared with PostgreSQL's own tools.
#
# Starts two throwaway PostgreSQL 15 clusters (source and target), loads a ~1.2 GB database
# `bench` into the source (pgbench -i -s 40, a TOASTed table, secondary indexes), then
# times, each into a fresh empty target database:
#   (a) pgferry migration create --migration-option Migrate --jobs $(nproc)
#   (b) pg_dump -Fc bench | pg_restore -d bench                   (one stream)
#   (c) pg_dump -Fd -j N -f DIR bench; pg_restore -j N -d bench DIR   (both timed)
# and prints the seconds, the ratio to (b), peak RSS, the phases of pgferry's run and a
# verdict against the targets: pgferry <= 0.5x the time of (b), pgferry's peak RSS < 150 MB.
# Every target is checked against the source (row counts, index count, a payload hash).
#
# Usage: bash bench/offline.sh                 (scale 40, 1.2 GB; ~2.5 min in all on 2 cores, tmpfs)
#        BENCH_SCALE=5 bash bench/offline.sh   (160 MB; ~25 s)
# Environment:
#   BENCH_SCALE    pgbench scale (default 40); the wide table has 5000 rows per scale unit
#   BENCH_JOBS     workers for pgferry --jobs and pg_dump/pg_restore -j (default: nproc)
#   BENCH_PG_BIN   PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_TMPDIR   where the clusters go (default /dev/shm when it has > 4 GiB free,
#                  else $TMPDIR or /tmp)
#   BENCH_KEEP=1   keep the work directory (clusters, logs, pgferry events) at the end
#   BENCH_STRICT=1 exit 3 when a target of the verdict is missed
#   BENCH_SKIP_BUILD=1  use the pgferry binary already built
#   BENCH_BASELINES=0   time pgferry only, not (b) and (c) (no ratio, no verdict)
# As root, the server programs run as the OS user `postgres` (PostgreSQL refuses root);
# the clients (psql, pgbench, pg_dump, pg_restore, pgferry) run as the invoking user.
set -euo pipefail

SCALE=${BENCH_SCALE:-40}
JOBS=${BENCH_JOBS:-$(nproc)}
PG_BIN=${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}
WIDE_ROWS=$((SCALE * 5000))
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PGFERRY=$TARGET_DIR/release/pgferry

die() { echo "offline.sh: $*" >&2; exit 1; }
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# Seconds between two $EPOCHREALTIME values, to 0.1 s.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
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
# CPU seconds spent (not niced, all processes) between two snapshots: the work a method
# costs, whatever its parallelism.
cpu_seconds() {
  awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f", (y[1] - x[1]) / hz }'
}

[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer (got '$SCALE')"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "BENCH_JOBS must be a positive integer (got '$JOBS')"
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
say "building pgferry (release)"
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  (cd "$REPO" && cargo build --release -p pgferry)
fi
[ -x "$PGFERRY" ] || die "$PGFERRY not found after the build (is CARGO_TARGET_DIR elsewhere?)"

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
  local dir=$WORK/$1 port attempt
  for attempt in 1 2 3 4 5 6 7 8; do
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

# What a correct copy must reproduce: row counts, the number of indexes, a payload hash.
SIGNATURE_SQL="select 'branches=' || (select count(*) from pgbench_branches)
  || ' tellers=' || (select count(*) from pgbench_tellers)
  || ' accounts=' || (select count(*) from pgbench_accounts)
  || ' history=' || (select count(*) from pgbench_history)
  || ' wide=' || (select count(*) from wide)
  || ' indexes=' || (select count(*) from pg_indexes where schemaname = 'public')
  || ' payload_hash=' || (select sum(hashtext(payload)::numeric) from wide)
  || ' abalance_sum=' || (select sum(abalance) from pgbench_accounts)"
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
verify_target() { # $1: label
  local sig
  sig=$(sq "$TP" bench -c "$SIGNATURE_SQL" 2>&1) || sig="(query failed: $sig)"
  if [ "$sig" = "$SOURCE_SIGNATURE" ]; then
    say "$1: target matches the source ($sig)"
  else
    say "$1: TARGET DIFFERS from the source"
    echo "    source: $SOURCE_SIGNATURE"
    echo "    target: $sig"
    FAILED=1
  fi
}

# Max RSS in kB from a GNU time -v report.
max_rss_kb() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }
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

# Samples pgferry every 100 ms until it exits; prints "<own VmHWM kB> <max tree VmRSS kB>".
# VmHWM is the kernel's own high-water mark of the process, so sampling can only miss growth
# in the last 100 ms before exit. The tree sum adds pg_dump/pg_restore (and their workers).
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
      done <"/proc/$p/status" 2>/dev/null || true
    done
    [ "$sum" -gt "$tree" ] && tree=$sum
    sleep 0.1
  done
  echo "$hwm $tree"
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

export PGFERRY_CACHE_DIR=$WORK/pgferry-cache
export PGFERRY_PLUGINS=$WORK/plugins.toml # no external plugins, whatever the user configured
: >"$PGFERRY_PLUGINS"
say "warming pgferry's compiled-plugin cache (a first run on a machine compiles the built-in plugins once)"
/usr/bin/time -f '%e %M' -o "$WORK/warmup.time" "$PGFERRY" --state-dir "$WORK/warmup-state" plugin list >/dev/null
read -r WARM_S WARM_KB <"$WORK/warmup.time"
say "plugin compilation: ${WARM_S} s, peak RSS $(mb "$WARM_KB") MB (cached in PGFERRY_CACHE_DIR afterwards)"

# ---------------------------------------------------------------------------------------
# (a) pgferry
reset_target
say "(a) pgferry migration create --migration-option Migrate --jobs $JOBS"
A=$WORK/pgferry
mkdir -p "$A"
cat >"$A/properties.json" <<EOF
{"properties": {
  "SourceDBServerResourceId": "127.0.0.1:$SP@postgres",
  "DBsToMigrate": ["bench"],
  "sourceType": "OnPremises",
  "OverwriteDBsInTarget": "true"
}}
EOF
mkfifo "$A/stderr.fifo"
stamp <"$A/stderr.fifo" >"$A/events.log" &
stamp_pid=$!
BG_PIDS+=("$stamp_pid")
sample_activity "$A/stop" >"$A/activity.log" &
activity_pid=$!
BG_PIDS+=("$activity_pid")
a_start=$EPOCHREALTIME
A_CPU0=$(cpu_snap)
/usr/bin/time -v -o "$A/time.txt" "$PGFERRY" --state-dir "$A/state" --output json \
  migration create --migration-name "bench-$$" --properties "$A/properties.json" \
  --target "127.0.0.1:$TP" --migration-option Migrate --jobs "$JOBS" --pg-bin "$PG_BIN" \
  >"$A/result.json" 2>"$A/stderr.fifo" &
time_pid=$!
BG_PIDS+=("$time_pid")
pgferry_pid=
while [ -z "$pgferry_pid" ] && kill -0 "$time_pid" 2>/dev/null; do
  pgferry_pid=$(pgrep -P "$time_pid" | head -n 1) || true
  [ -n "$pgferry_pid" ] || sleep 0.01
done
if [ -n "$pgferry_pid" ]; then
  BG_PIDS+=("$pgferry_pid")
  sample_rss "$pgferry_pid" >"$A/rss.txt" &
  rss_pid=$!
else
  rss_pid=
fi
a_rc=0
wait "$time_pid" || a_rc=$?
a_end=$EPOCHREALTIME
A_CPU1=$(cpu_snap)
A_CPU=$(cpu_busy "$A_CPU0" "$A_CPU1")
A_CPUS=$(cpu_seconds "$A_CPU0" "$A_CPU1")
touch "$A/stop"
wait "$stamp_pid" || true
[ -n "$rss_pid" ] && { wait "$rss_pid" || true; }
wait "$activity_pid" || true
BG_PIDS=() # all ended: nothing of theirs is left for the cleanup to stop
A_S=$(elapsed "$a_start" "$a_end")
A_TIME_KB=$(max_rss_kb "$A/time.txt")
read -r A_HWM_KB A_TREE_KB <"$A/rss.txt" 2>/dev/null || { A_HWM_KB=0; A_TREE_KB=0; }
A_USER_S=$(awk -F': ' '/User time/ { print $2 }' "$A/time.txt")
A_SYS_S=$(awk -F': ' '/System time/ { print $2 }' "$A/time.txt")
if [ "$a_rc" -ne 0 ]; then
  say "(a) pgferry FAILED with exit code $a_rc after $A_S s; its output:"
  cat "$A/result.json"
  sed 's/^[0-9.]* //' "$A/events.log" | grep -v '^{"event"' | tail -n 40
  FAILED=1
  A_OK=0
else
  say "(a) pgferry: $A_S s, exit 0"
  A_OK=1
  verify_target "(a) pgferry"
fi

# Phases of pgferry's run, from its progress events (stderr, --output json) and the
# active statements sampled once a second.
event_at() { awk -v s="\"stage\":\"$1\"" 'index($0, s) { print $1; exit }' "$A/events.log"; }
t_created=$(event_at Created)
t_schema=$(event_at SchemaRestored)
t_copied=$(event_at DataCopied)
t_completed=$(event_at Completed)
t_verify=$(awk 'index($0, "\"event\":\"VerificationStarted\"") { print $1; exit }' "$A/events.log")
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
PHASES=$(
  echo "  pgferry's phases:"
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
)
echo "$PHASES"

B_S=0 B_CPU=- B_CPUS=- B_KB="0 0" C_S=0 C_CPU=- C_CPUS=- C_KB="0 0"
if [ "${BENCH_BASELINES:-1}" != 0 ]; then
# ---------------------------------------------------------------------------------------
# (b) pg_dump -Fc | pg_restore
reset_target
say "(b) pg_dump -Fc bench | pg_restore -d bench"
B=$WORK/single
mkdir -p "$B"
b_start=$EPOCHREALTIME
B_CPU0=$(cpu_snap)
b_rc=0
sq "$TP" postgres -c "create database bench" || b_rc=$?
/usr/bin/time -v -o "$B/dump.time" "$PG_BIN/pg_dump" -Fc -h 127.0.0.1 -p "$SP" -U postgres bench 2>"$B/dump.err" |
  /usr/bin/time -v -o "$B/restore.time" "$PG_BIN/pg_restore" -h 127.0.0.1 -p "$TP" -U postgres -d bench 2>"$B/restore.err" || b_rc=$?
b_end=$EPOCHREALTIME
B_CPU1=$(cpu_snap)
B_CPU=$(cpu_busy "$B_CPU0" "$B_CPU1")
B_CPUS=$(cpu_seconds "$B_CPU0" "$B_CPU1")
B_S=$(elapsed "$b_start" "$b_end")
B_KB="$(max_rss_kb "$B/dump.time") $(max_rss_kb "$B/restore.time")"
if [ "$b_rc" -ne 0 ]; then
  say "(b) FAILED (exit $b_rc) after $B_S s"
  cat "$B/dump.err" "$B/restore.err"
  FAILED=1
else
  say "(b) pg_dump | pg_restore: $B_S s"
  verify_target "(b) pg_dump | pg_restore"
fi

# ---------------------------------------------------------------------------------------
# (c) pg_dump -Fd -j N + pg_restore -j N
reset_target
say "(c) pg_dump -Fd -j $JOBS -f DIR bench; pg_restore -j $JOBS -d bench DIR"
C=$WORK/parallel
mkdir -p "$C"
c_rc=0
c_start=$EPOCHREALTIME
C_CPU0=$(cpu_snap)
/usr/bin/time -v -o "$C/dump.time" "$PG_BIN/pg_dump" -Fd -j "$JOBS" -f "$C/dump" -h 127.0.0.1 -p "$SP" -U postgres bench 2>"$C/dump.err" || c_rc=$?
c_mid=$EPOCHREALTIME
sq "$TP" postgres -c "create database bench" || c_rc=$?
/usr/bin/time -v -o "$C/restore.time" "$PG_BIN/pg_restore" -j "$JOBS" -h 127.0.0.1 -p "$TP" -U postgres -d bench "$C/dump" 2>"$C/restore.err" || c_rc=$?
c_end=$EPOCHREALTIME
C_CPU1=$(cpu_snap)
C_CPU=$(cpu_busy "$C_CPU0" "$C_CPU1")
C_CPUS=$(cpu_seconds "$C_CPU0" "$C_CPU1")
C_S=$(elapsed "$c_start" "$c_end")
C_DUMP_S=$(elapsed "$c_start" "$c_mid")
C_RESTORE_S=$(elapsed "$c_mid" "$c_end")
C_KB="$(max_rss_kb "$C/dump.time") $(max_rss_kb "$C/restore.time")"
C_DUMP_SIZE=$(du -sh "$C/dump" 2>/dev/null | cut -f1)
if [ "$c_rc" -ne 0 ]; then
  say "(c) FAILED (exit $c_rc) after $C_S s"
  cat "$C/dump.err" "$C/restore.err"
  FAILED=1
else
  say "(c) pg_dump -Fd -j $JOBS + pg_restore -j $JOBS: $C_S s (dump $C_DUMP_S s → $C_DUMP_SIZE, restore $C_RESTORE_S s)"
  verify_target "(c) pg_dump -j | pg_restore -j"
fi
rm -rf "$C/dump"
fi

# ---------------------------------------------------------------------------------------
ratio() { awk -v x="$1" -v b="$B_S" 'BEGIN { if (b > 0) printf "%.2fx", x / b; else print "-" }'; }
pair_mb() { set -- $1; echo "$(mb "${1:-0}") / $(mb "${2:-0}")"; }
echo
echo "pgferry offline benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }'), scale $SCALE, database bench $DB_SIZE, clusters on $parent"
row() { printf '%-40s %8s %7s  %-22s %8s  %s\n' "$@"; }
row "method" "seconds" "vs (b)" "CPU busy, $(nproc) cores" "CPU-s" "peak RSS, MB"
row "(a) pgferry --jobs $JOBS" "$A_S" "$(ratio "$A_S")" "$A_CPU" "$A_CPUS" \
  "$(mb "$A_HWM_KB") pgferry itself; $(mb "$A_TIME_KB") largest process of its tree; $(mb "$A_TREE_KB") whole tree"
row "(b) pg_dump -Fc | pg_restore" "$B_S" "1.00x" "$B_CPU" "$B_CPUS" "$(pair_mb "$B_KB") (pg_dump / pg_restore)"
row "(c) pg_dump -Fd -j $JOBS + pg_restore -j $JOBS" "$C_S" "$(ratio "$C_S")" "$C_CPU" "$C_CPUS" "$(pair_mb "$C_KB") (pg_dump / pg_restore, leader)"
echo "  pgferry's own CPU: ${A_USER_S} s user + ${A_SYS_S} s system (GNU time; includes its pg_dump/pg_restore children)"
echo "  throughput of (a): $(awk -v b="$DB_BYTES" -v s="$A_S" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s }') MB/s of database size"
echo "$PHASES"
echo "  RSS: 'pgferry itself' is VmHWM of the pgferry process sampled from /proc every 100 ms (the"
echo "  kernel's high-water mark, so only the last 100 ms before exit can be missed). GNU time's"
echo "  'Maximum resident set size' is ru_maxrss from wait4: the largest single process among"
echo "  pgferry and the children it waited for (pg_dump/pg_restore), not their sum; 'whole tree'"
echo "  is the largest sampled sum of VmRSS over pgferry and its descendants."

time_ok=$(awk -v a="$A_S" -v b="$B_S" 'BEGIN { print (a <= 0.5 * b) ? 1 : 0 }')
rss_ok=$(awk -v k="$A_HWM_KB" 'BEGIN { print (k > 0 && k < 150 * 1024) ? 1 : 0 }')
verdict="time $A_S s ≤ 0.5 × $B_S s: $([ "$time_ok" = 1 ] && echo PASS || echo FAIL); peak RSS $(mb "$A_HWM_KB") MB < 150 MB: $([ "$rss_ok" = 1 ] && echo PASS || echo FAIL)"
if [ "${BENCH_BASELINES:-1}" = 0 ]; then
  echo "verdict: none (BENCH_BASELINES=0: no baseline to compare with)"
elif [ "$A_OK" = 1 ] && [ "$time_ok" = 1 ] && [ "$rss_ok" = 1 ]; then
  echo "verdict: PASS — $verdict"
else
  echo "verdict: FAIL — $verdict$([ "$A_OK" = 1 ] || echo "; pgferry did not succeed")"
fi

[ "$FAILED" = 0 ] || exit 1
if [ -n "${BENCH_STRICT:-}" ] && [ "${BENCH_BASELINES:-1}" != 0 ] && ! { [ "$time_ok" = 1 ] && [ "$rss_ok" = 1 ]; }; then exit 3; fi
exit 0
