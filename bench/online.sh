#!/usr/bin/env bash
# bench/online.sh: pgferry's online migration under a pgbench write load.
#
# Starts two throwaway PostgreSQL 15 clusters, loads `pgbench -i -s $BENCH_SCALE` into the
# source, starts an online migration and measures:
#   1. apply throughput: the runner is stopped (kill -9) while pgbench records a backlog
#      for BENCH_SECONDS; the resumed runner's time to apply it gives source transactions/s
#      and rows/s, printed against the rate pgbench sustained on the source;
#   2. lag under load: pgbench runs for BENCH_SECONDS at a steady rate the source sustains
#      (BENCH_RATE_PERCENT, default 50, of the rate it reached alone), then unthrottled,
#      while `show`'s latency is sampled every 0.5 s (median, 95th percentile, max);
#   3. cutover: request to Succeeded, and that minus the final verification.
# Targets (issue 5): apply keeps up with the source (ratio >= 1), steady lag < 1 s,
# cutover excluding verification < 5 s.
#
# Usage: bash bench/online.sh                      (scale 10, 20 s load phases; ~2 min)
# Environment: BENCH_SCALE (10), BENCH_SECONDS (20), BENCH_RATE_PERCENT (50), BENCH_PG_BIN, BENCH_SKIP_BUILD=1,
#              BENCH_KEEP=1 (keep the work directory with logs).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}
SCALE=${BENCH_SCALE:-10}
SECONDS_LOAD=${BENCH_SECONDS:-20}
PGFERRY=${CARGO_TARGET_DIR:-$REPO/target}/release/pgferry

die() { echo "online.sh: $*" >&2; exit 1; }
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
now() { date +%s.%N; }
# CPU seconds (user + system) a process has used so far.
cpu_seconds() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo "?"; return; }
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.1f", ($12 + $13) / hz }' "/proc/$1/stat"; }
diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

for tool in initdb pg_ctl postgres psql pgbench; do
  [ -x "$PG_BIN/$tool" ] || die "$PG_BIN/$tool not found (apt-get install postgresql-15, or set BENCH_PG_BIN)"
done
unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSSLMODE PGOPTIONS
if [ "$(id -u)" -eq 0 ]; then as_server() { runuser -u postgres -- "$@"; }; ROOT=1; else as_server() { "$@"; }; ROOT=0; fi

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  say "building pgferry (release)"
  (cd "$REPO" && cargo build --release -q -p pgferry)
fi
[ -x "$PGFERRY" ] || die "$PGFERRY not found"

WORK=$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/pgferry-online.XXXXXX")
chmod 755 "$WORK"
export PGFERRY_STATE_DIR=$WORK/state
cleanup() {
  set +e
  pkill -9 -f "pgferry.*--migration-name onlinebench" 2>/dev/null
  for c in src tgt; do
    [ -f "$WORK/$c/data/postmaster.pid" ] && as_server "$PG_BIN/pg_ctl" -D "$WORK/$c/data" -m immediate -w stop >/dev/null 2>&1
  done
  if [ -n "${BENCH_KEEP:-}" ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

start_cluster() { # name extra-settings… ; sets PORT_<name>
  local name=$1 dir=$WORK/$1 port
  shift
  mkdir -p "$dir"
  [ "$ROOT" = 1 ] && chown postgres: "$dir"
  as_server "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || die "initdb $name failed"
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "fsync = off"
    echo "full_page_writes = off"
    echo "shared_buffers = 256MB"
    echo "max_wal_size = 4GB"
    for s in "$@"; do echo "$s"; done
  } >>"$dir/data/postgresql.conf"
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    if as_server "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w start >/dev/null 2>&1; then
      printf -v "PORT_$name" '%s' "$port"
      return
    fi
  done
  die "cannot start $name"
}
sq() { local port=$1 db=$2; shift 2; "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"; }
substate() { "$PGFERRY" migration show --migration-name onlinebench --output json 2>/dev/null | grep -o '"substate": *"[A-Za-z]*"' | head -1 | sed 's/.*"\([A-Za-z]*\)"$/\1/'; }
wait_substate() {
  local deadline=$((SECONDS + 600))
  until [ "$(substate)" = "$1" ]; do
    [ $SECONDS -lt $deadline ] || die "the migration never reached $1: $("$PGFERRY" migration show --migration-name onlinebench)"
    case "$(substate)" in Failed | Canceled) die "the migration ended: $("$PGFERRY" migration show --migration-name onlinebench)" ;; esac
    sleep 0.2
  done
}
history_rows() { sq "$1" bench -c "select count(*) from pgbench_history"; }

say "starting two PostgreSQL 15 clusters in $WORK"
start_cluster src "wal_level = logical" "max_replication_slots = 10" "max_wal_senders = 10"
start_cluster tgt
say "loading pgbench scale $SCALE into the source"
sq "$PORT_src" postgres -c "create database bench"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT_src" -U postgres -i -q -s "$SCALE" bench >"$WORK/pgbench-init.log" 2>&1
sq "$PORT_src" bench -c "alter table pgbench_history replica identity full"
printf '{"properties": {"SourceDBServerResourceId": "127.0.0.1:%s@postgres", "DBsToMigrate": ["bench"], "sourceType": "OnPremises", "MigrationMode": "Online"}}\n' "$PORT_src" >"$WORK/props.json"

say "online migration: base copy, then streaming"
"$PGFERRY" migration create --migration-name onlinebench --properties "$WORK/props.json" --target "127.0.0.1:$PORT_tgt" \
  --migration-option Migrate --no-wait >/dev/null
wait_substate WaitingForCutoverTrigger

# 1. Apply throughput on a recorded backlog.
pkill -9 -f "pgferry.*--migration-name onlinebench" || die "no runner to stop"
say "runner stopped; recording ${SECONDS_LOAD}s of pgbench -c 4 -j 2 (tpcb-like) on the source"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT_src" -U postgres -c 4 -j 2 -T "$SECONDS_LOAD" -n bench >"$WORK/pgbench-backlog.log" 2>&1
backlog=$(awk '/number of transactions actually processed/ { split($0, a, ": "); split(a[2], b, "/"); print b[1] }' "$WORK/pgbench-backlog.log")
source_tps=$(awk -v n="$backlog" -v s="$SECONDS_LOAD" 'BEGIN { printf "%.0f", n / s }')
want=$(history_rows "$PORT_src")
say "backlog: $backlog transactions ($source_tps/s on the source); resuming the runner"
t0=$(now)
setsid "$PGFERRY" migration resume --migration-name onlinebench >"$WORK/resume.log" 2>&1 </dev/null &
until [ "$(history_rows "$PORT_tgt")" -ge "$want" ]; do sleep 0.1; done
t1=$(now)
# Where the CPU went while draining: the processes that did it all started with the resume.
walsender=$(sq "$PORT_src" postgres -c "select pid from pg_stat_replication where application_name like 'pgferry%' limit 1")
runner=$(pgrep -f "pgferry migration resume --migration-name onlinebench" | head -1)
cpu_walsender=$(cpu_seconds "$walsender"); cpu_runner=$(cpu_seconds "$runner")
cpu_apply=0
for pid in $(sq "$PORT_tgt" postgres -c "select pid from pg_stat_activity where datname = 'bench' and backend_type = 'client backend'"); do
  cpu_apply=$(awk -v a="$cpu_apply" -v b="$(cpu_seconds "$pid")" 'BEGIN { printf "%.1f", a + b }')
done
drain=$(diff_s "$t0" "$t1")
apply_tps=$(awk -v n="$backlog" -v s="$drain" 'BEGIN { printf "%.0f", n / s }')
# tpcb-like writes 4 rows per transaction (3 UPDATEs, 1 INSERT).
apply_rows=$(awk -v n="$backlog" -v s="$drain" 'BEGIN { printf "%.0f", 4 * n / s }')
ratio=$(awk -v a="$apply_tps" -v b="$source_tps" 'BEGIN { printf "%.2f", a / b }')
say "applied the backlog in ${drain}s (including the runner's start-up): $apply_tps transactions/s, $apply_rows rows/s"
say "CPU while draining: source walsender ${cpu_walsender}s, pgferry ${cpu_runner}s, target backends ${cpu_apply}s"

# 2. Lag under load: a steady rate the source sustains with CPU to spare (pgbench -R at
# BENCH_RATE_PERCENT of the rate it reached alone), then pgbench unthrottled, where the
# source's four backends and pgbench take both cores from the apply.
# Prints "<tps> <p50> <p95> <max> <samples>".
lag_under() { # label, pgbench options…
  local label=$1
  shift
  "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT_src" -U postgres -c 4 -j 2 -T "$SECONDS_LOAD" -n "$@" bench >"$WORK/pgbench-$label.log" 2>&1 &
  local load_pid=$!
  : >"$WORK/latency-$label"
  sleep 2
  while kill -0 "$load_pid" 2>/dev/null; do
    "$PGFERRY" migration show --migration-name onlinebench --output json | grep -o '"latencySeconds": *[0-9.e-]*' | head -1 | awk '{ print $2 }' >>"$WORK/latency-$label"
    sleep 0.5
  done
  wait "$load_pid"
  local tps
  tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$WORK/pgbench-$label.log")
  sort -g "$WORK/latency-$label" | awk -v tps="$tps" '{ v[NR] = $1 } END { printf "%s %.3f %.3f %.3f %d\n", tps, v[int(NR * 0.5) + 1], v[int(NR * 0.95) + 1], v[NR], NR }'
}
RATE_PERCENT=${BENCH_RATE_PERCENT:-50}
rate=$((source_tps * RATE_PERCENT / 100))
say "steady load: pgbench -c 4 -j 2 -R $rate -T $SECONDS_LOAD ($RATE_PERCENT% of the source's rate) while sampling the latency"
read -r steady_tps lag_p50 lag_p95 lag_max samples < <(lag_under steady -R "$rate")
# Let the apply catch up before the next phase.
until [ "$(history_rows "$PORT_tgt")" -ge "$(history_rows "$PORT_src")" ]; do sleep 0.2; done
say "saturating load: pgbench -c 4 -j 2 -T $SECONDS_LOAD unthrottled"
read -r sat_tps sat_p50 sat_p95 sat_max sat_samples < <(lag_under saturating)

# 3. Cutover.
say "cutover"
t0=$(now)
"$PGFERRY" migration update --migration-name onlinebench --cutover --output json >"$WORK/cutover.json"
t1=$(now)
cutover=$(diff_s "$t0" "$t1")
verification=$(grep -o '"verificationSeconds": *[0-9.e-]*' "$WORK/cutover.json" | awk '{ printf "%.2f", $2 }')
switch=$(awk -v a="$cutover" -v b="$verification" 'BEGIN { printf "%.2f", a - b }')
[ "$(history_rows "$PORT_tgt")" = "$(history_rows "$PORT_src")" ] || die "the target's pgbench_history differs from the source's after cutover"

cat <<EOF

online migration, pgbench scale $SCALE, $(nproc) cores, source and target on this machine
  apply throughput   $apply_tps txn/s, $apply_rows rows/s  (source sustained $source_tps txn/s: ratio $ratio, target >= 1)
  steady lag         p50 ${lag_p50}s, p95 ${lag_p95}s, max ${lag_max}s over $samples samples at $steady_tps txn/s, ${RATE_PERCENT}% of the source's rate  (target < 1 s)
  saturated lag      p50 ${sat_p50}s, p95 ${sat_p95}s, max ${sat_max}s over $sat_samples samples at $sat_tps txn/s, pgbench unthrottled on the same 2 cores
  cutover            ${cutover}s request to Succeeded, ${switch}s without the ${verification}s verification  (target < 5 s)
EOF
