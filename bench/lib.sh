# bench/lib.sh: what bench/offline.sh and bench/scale.sh share. Sourced, never run.
#
# The sourcing script sets, before calling these functions:
#   BENCH_NAME   its own name, for messages (offline.sh, scale.sh)
#   PG_BIN, JOBS, ROUNDS, METHODS (space-separated), REPO, PGFERRY
# and, for run_method: LABEL[name], and the functions reset_target and verify_target (here
# too, generic over SIGNATURE_SQL and SOURCE_SIGNATURE[db]). Every run works on the database
# ${DB_OF[name]:-$DB} with the method ${METHOD_OF[name]:-name}.
# The method functions run through `bash -c` (export -f) and cleanup through a trap:
# shellcheck disable=SC2317,SC2034
# shellcheck shell=bash

die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
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
mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# The PostgreSQL programs, GNU time (installed as root when missing), jq (optional).
require_tools() {
  local tool
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
}

# The libpq environment must not redirect any connection of the script or its tools; as
# root, the server programs run as the OS user postgres (PostgreSQL refuses root).
setup_environment() {
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
}

build_pgferry() {
  if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    say "building pgferry (release)"
    (cd "$REPO" && cargo build --release -p pgferry)
  fi
  [ -x "$PGFERRY" ] || die "$PGFERRY not found after the build (is CARGO_TARGET_DIR elsewhere?)"
}

# make_workdir [SHM]: the work directory WORK under $BENCH_TMPDIR if set, else (with SHM)
# /dev/shm when it has > 4 GiB free (a data dir is ~1000 files and the WAL is large), else
# $TMPDIR or /tmp. Sets WORK and WORK_PARENT; the EXIT trap stops every cluster in it and
# removes it (BENCH_KEEP=1 keeps it).
make_workdir() {
  local shm_kb
  if [ -n "${BENCH_TMPDIR:-}" ]; then
    WORK_PARENT=$BENCH_TMPDIR
  elif [ "${1:-}" = shm ] && shm_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }') &&
    [ "${shm_kb:-0}" -gt $((4 * 1024 * 1024)) ] && [ -w /dev/shm ]; then
    WORK_PARENT=/dev/shm
  else
    WORK_PARENT=${TMPDIR:-/tmp}
  fi
  WORK=$(mktemp -d "$WORK_PARENT/pgferry-bench.XXXXXX")
  chmod 755 "$WORK" # the server user must reach its cluster dir
  BG_PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

cleanup() {
  local rc=$? pid c
  set +e
  trap - EXIT INT TERM
  touch "$WORK/stop" 2>/dev/null
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

# init_cluster NAME [SETTING…]: initdb in $WORK/NAME; the settings are appended to
# postgresql.conf after the common ones.
init_cluster() {
  local dir=$WORK/$1 locale=C setting
  shift
  locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$' && locale=C.UTF-8
  mkdir -p "$dir"
  [ "$ROOT" = 1 ] && chown postgres: "$dir"
  as_server "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale="$locale" \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb of the ${dir##*/} cluster failed"; }
  # Speed over durability: a throwaway cluster never needs to survive a crash.
  cat >>"$dir/data/postgresql.conf" <<EOF

# bench/$BENCH_NAME
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
  for setting in "$@"; do echo "$setting" >>"$dir/data/postgresql.conf"; done
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

# start_clusters [SETTING…]: the source and target clusters; sets SP and TP.
start_clusters() {
  say "starting two PostgreSQL clusters in $WORK ($("$PG_BIN/postgres" --version))"
  init_cluster src "$@"
  init_cluster tgt "$@"
  start_cluster src
  SP=$STARTED_PORT
  start_cluster tgt
  TP=$STARTED_PORT
  say "source 127.0.0.1:$SP, target 127.0.0.1:$TP"
}

# sq PORT DB [psql args…]: psql, unaligned, tuples only, stop on error.
sq() {
  local port=$1 db=$2
  shift 2
  "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# ---------------------------------------------------------------------------------------
# The ~1 GB database of bench/offline.sh (and scale.sh's size scenario): pgbench -i -s SCALE,
# a TOASTed table `wide` of 5000 rows per scale unit, secondary indexes.
# load_pgbench_db PORT DB SCALE
load_pgbench_db() {
  local port=$1 db=$2 scale=$3 wide_rows=$(($3 * 5000)) start=$EPOCHREALTIME
  say "loading the source database $db: pgbench -i -s $scale, wide table of $wide_rows rows"
  sq "$port" postgres -c "create database $db"
  "$PG_BIN/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres "$db" >"$WORK/pgbench-$db.log" 2>&1 ||
    { cat "$WORK/pgbench-$db.log" >&2; die "pgbench -i failed"; }
  grep -v ' of [0-9]* tuples (' "$WORK/pgbench-$db.log" | sed 's/^/    /' || true
  # The payload is 64 independent md5s (2 kB of random hex): pglz cannot compress it, so every
  # value is stored out of line in the TOAST table (a repeated md5 would compress to ~100
  # bytes and stay inline).
  sq "$port" "$db" <<SQL
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
  from generate_series(1, $wide_rows) g;
create index pgbench_accounts_bid on pgbench_accounts (bid);
create index pgbench_accounts_abalance on pgbench_accounts (abalance);
create index wide_payload_prefix on wide (left(payload, 16));
vacuum analyze wide;
checkpoint;
SQL
  say "loaded in $(elapsed "$start" "$EPOCHREALTIME") s"
  sq "$port" "$db" -F ' ' -c "
    select 'database $db: ' || pg_size_pretty(pg_database_size('$db'))
        || ' (pgbench_accounts ' || pg_size_pretty(pg_total_relation_size('pgbench_accounts'))
        || ', wide ' || pg_size_pretty(pg_total_relation_size('wide'))
        || ' of which TOAST ' || pg_size_pretty(pg_total_relation_size(reltoastrelid)) || ')'
      from pg_class where oid = 'wide'::regclass"
}

# What a correct copy of that database must reproduce: row counts, the number of indexes, a
# payload hash, a sum, and the value of wide's sequence.
PGBENCH_SIGNATURE_SQL="select 'branches=' || (select count(*) from pgbench_branches)
  || ' tellers=' || (select count(*) from pgbench_tellers)
  || ' accounts=' || (select count(*) from pgbench_accounts)
  || ' history=' || (select count(*) from pgbench_history)
  || ' wide=' || (select count(*) from wide)
  || ' indexes=' || (select count(*) from pg_indexes where schemaname = 'public')
  || ' payload_hash=' || (select sum(hashtext(payload)::numeric) from wide)
  || ' abalance_sum=' || (select sum(abalance) from pgbench_accounts)
  || ' wide_id_seq=' || (select coalesce(last_value::text, 'unset') from pg_sequences where sequencename = 'wide_id_seq')"
# The start of the signature a database of scale $1 has.
pgbench_expected() {
  echo "branches=$1 tellers=$(($1 * 10)) accounts=$(($1 * 100000)) history=0 wide=$(($1 * 5000)) indexes=7 "
}

# ---------------------------------------------------------------------------------------
# Each run starts from no target database and freshly checkpointed clusters, so no run pays
# for the previous one's checkpoint. reset_target DB
reset_target() {
  say "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the timings)"
  sq "$TP" postgres -c "set client_min_messages = warning" -c "drop database if exists $1 with (force)"
  sq "$TP" postgres -c "checkpoint"
  sq "$SP" postgres -c "checkpoint"
}

# verify_target LABEL DB: the target's $SIGNATURE_SQL against the source's
# (SOURCE_SIGNATURE[DB]); sets CHECK_RESULT to exact or DIFFERS.
FAILED=0
CHECK_RESULT=
declare -A SOURCE_SIGNATURE
verify_target() {
  local sig
  sig=$(sq "$TP" "$2" -c "$SIGNATURE_SQL" 2>&1) || sig="(query failed: $sig)"
  if [ "$sig" = "${SOURCE_SIGNATURE[$2]}" ]; then
    say "$1: target matches the source exactly"
    CHECK_RESULT=exact
  else
    say "$1: TARGET DIFFERS from the source"
    echo "    source: ${SOURCE_SIGNATURE[$2]}"
    echo "    target: $sig"
    CHECK_RESULT=DIFFERS
    FAILED=1
  fi
}

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
  local c pm p kids=()
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
  local stop=$1 side q
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

# pgferry's compiled-plugin cache, filled once before the timed runs; no external plugins.
warm_pgferry() {
  export PGFERRY_CACHE_DIR=$WORK/pgferry-cache
  export PGFERRY_PLUGINS=$WORK/plugins.toml # no external plugins, whatever the user configured
  : >"$PGFERRY_PLUGINS"
  say "warming pgferry's compiled-plugin cache (a first run on a machine compiles the built-in plugins once)"
  /usr/bin/time -f '%e %M' -o "$WORK/warmup.time" "$PGFERRY" --state-dir "$WORK/warmup-state" plugin list >/dev/null
  read -r WARM_S WARM_KB <"$WORK/warmup.time"
  say "plugin compilation: ${WARM_S} s, peak RSS $(mb "$WARM_KB") MB (cached in PGFERRY_CACHE_DIR afterwards)"
}

# ---------------------------------------------------------------------------------------
# The shared methods. Each runs as `bash -c method_NAME` under GNU time, in its own run
# directory $RUN_DIR, on the database $RUN_DB, and starts with no such database on the
# target (all but pgferry create it, timed).
# mark LABEL appends "<time> LABEL" to $RUN_DIR/marks: the end of a phase.
mark() { printf '%s %s\n' "$EPOCHREALTIME" "$1" >>"$RUN_DIR/marks"; }

# (pgferry) its offline migration, with its own verification.
method_pgferry() {
  exec "$PGFERRY" --state-dir "$RUN_DIR/state" --output json \
    migration create --migration-name "bench-$RUN_ID" --properties "$RUN_DIR/properties.json" \
    --target "127.0.0.1:$TP" --migration-option Migrate --jobs "$JOBS" --pg-bin "$PG_BIN"
}

# (dump) pg_dump -Fc | pg_restore: one stream.
method_dump() {
  sq "$TP" postgres -c "create database $RUN_DB"
  "$PG_BIN/pg_dump" -Fc -h 127.0.0.1 -p "$SP" -U postgres "$RUN_DB" |
    "$PG_BIN/pg_restore" -h 127.0.0.1 -p "$TP" -U postgres -d "$RUN_DB"
}

# (dumpdir) pg_dump -Fd -j N to a directory, then pg_restore -j N; both timed.
method_dumpdir() {
  "$PG_BIN/pg_dump" -Fd -j "$JOBS" -f "$RUN_DIR/dump" -h 127.0.0.1 -p "$SP" -U postgres "$RUN_DB"
  mark dump
  sq "$TP" postgres -c "create database $RUN_DB"
  "$PG_BIN/pg_restore" -j "$JOBS" -h 127.0.0.1 -p "$TP" -U postgres -d "$RUN_DB" "$RUN_DIR/dump"
  mark restore
}

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
# Up to this many tables are listed one per line; with more, the slowest of them.
TABLES_LISTED=20
pgferry_phases() { # $1 start, $2 end; sets PH_* (seconds or -) and prints the phases
  local a_start=$1 a_end=$2 t_created t_schema t_copied t_completed t_verify
  t_created=$(event_at Created)
  t_schema=$(event_at SchemaRestored)
  t_copied=$(event_at DataCopied)
  t_completed=$(event_at Completed)
  t_verify=$(awk 'index($0, "\"event\":\"VerificationStarted\"") { print $1; exit }' "$A/events.log")
  PH_START=- PH_SCHEMA=- PH_DATA=- PH_INDEX=- PH_VERIFY=- PH_FINISH=-
  [ -n "$t_created" ] && PH_START=$(elapsed "$a_start" "$t_created")
  [ -n "$t_created" ] && [ -n "$t_schema" ] && PH_SCHEMA=$(elapsed "$t_created" "$t_schema")
  [ -n "$t_schema" ] && [ -n "$t_copied" ] && PH_DATA=$(elapsed "$t_schema" "$t_copied")
  [ -n "$t_copied" ] && [ -n "$t_verify" ] && PH_INDEX=$(elapsed "$t_copied" "$t_verify")
  [ -n "$t_verify" ] && [ -n "$t_completed" ] && PH_VERIFY=$(elapsed "$t_verify" "$t_completed")
  [ -n "$t_completed" ] && PH_FINISH=$(elapsed "$t_completed" "$a_end")
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
    awk 'substr($2, 1, 1) == "{" { ts = $1; sub(/^[^ ]* /, ""); print "{\"ts\":" ts ",\"e\":" $0 "}" }' "$A/events.log" |
      jq -rs --argjson t0 "$t_schema" '
      [ .[] | select(.e.event == "TableCopied") | .e.table + { ts } ]
      | group_by(.schema + "." + .name)
      | map({ t: (.[0].schema + "." + .[0].name), parts: length, rows: (map(.rows) | add),
              bytes: (map(.bytes) | add), s: (map(.seconds) | max), done: ((map(.ts) | max) - $t0) })
      | sort_by(.done) | .[] | [.t, .parts, .rows, .bytes, .s, .done] | @tsv' 2>/dev/null >"$A/tables.tsv" || true
    local n
    n=$(wc -l <"$A/tables.tsv")
    if [ "$n" -le "$TABLES_LISTED" ]; then
      echo "  tables copied (parts, rows, binary COPY MB, longest part; when its last part finished, from the data phase's start):"
    else
      echo "  tables copied: $n; the 10 with the longest part (parts, rows, binary COPY MB, longest part; when its last part finished, from the data phase's start):"
    fi
    { if [ "$n" -le "$TABLES_LISTED" ]; then cat "$A/tables.tsv"; else sort -t "$(printf '\t')" -k5,5gr "$A/tables.tsv" | head -n 10; fi; } |
      awk -F '\t' '{ printf "    %-26s %2d part(s) %9d rows %5.0f MB %6.1f s  done at +%.1f s\n", $1, $2, $3, $4 / 1048576, $5, $6 }' || true
  fi
}
mark_at() { awk -v l="$1" '$2 == l { print $1; exit }' "$2/marks" 2>/dev/null; }

# ---------------------------------------------------------------------------------------
# Results of each run, keyed "name,round" (read through `values`' nameref); PH_* are
# pgferry's phases.
declare -A R_WALL R_CCPU R_SCPU R_RSS R_TREE R_HWM R_DATA R_INDEX R_CHECK
declare -A R_PH_START R_PH_SCHEMA R_PH_VERIFY R_PH_FINISH
declare -A PGFERRY_PHASES METHOD_OF DB_OF
SKIPPED_PGCOPYDB=${SKIPPED_PGCOPYDB:-}

# run_method NAME ROUND: one timed run of method ${METHOD_OF[NAME]:-NAME} on the database
# ${DB_OF[NAME]:-$DB}, its target checked; the results go to R_*[NAME,ROUND].
run_method() {
  local name=$1 round=$2 dir rc=0 err start end c0 c1 s0 s1 tpid cpid='' rss_pid='' stamp_pid='' activity_pid=''
  local wall ccpu scpu rss hwm tree busy detail t_schema t_data t_index t_dump _ u s
  local method=${METHOD_OF[$1]:-$1} db=${DB_OF[$1]:-$DB}
  dir=$WORK/runs/r$round-$name
  mkdir -p "$dir"
  reset_target "$db"
  say "round $round: ${LABEL[$name]}"
  err=$dir/stderr.log
  BG_PIDS=()
  if [ "$method" = pgferry ]; then
    cat >"$dir/properties.json" <<EOF
{"properties": {
  "SourceDBServerResourceId": "127.0.0.1:$SP@postgres",
  "DBsToMigrate": ["$db"],
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
  RUN_DIR=$dir RUN_DB=$db RUN_ID="$$-$round" /usr/bin/time -f '%e %U %S %M' -o "$dir/time" \
    bash -c "set -euo pipefail; method_$method" >"$dir/stdout.log" 2>"$err" &
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
    if [ "$method" = pgcopydb ]; then
      say "round $round: pgcopydb FAILED (exit $rc) after $wall s: it cannot be run here, so it is skipped from now on; its last lines:"
      tail -n 25 "$err" | sed 's/^/    /'
      SKIPPED_PGCOPYDB="failed to run (exit $rc, see above)"
      R_CHECK[$name,$round]=FAILED
      return 0
    fi
    say "round $round: ${LABEL[$name]} FAILED with exit code $rc after $wall s; its output:"
    if [ "$method" = pgferry ]; then
      cat "$dir/stdout.log"
      sed 's/^[0-9.]* //' "$dir/events.log" | grep -v '^{"event"' | tail -n 40
    else
      tail -n 40 "$err"
    fi
    FAILED=1
    R_CHECK[$name,$round]=FAILED
    return 0
  fi
  verify_target "round $round: ${LABEL[$name]}" "$db"
  R_CHECK[$name,$round]=$CHECK_RESULT
  R_WALL[$name,$round]=$wall
  R_CCPU[$name,$round]=$ccpu
  R_SCPU[$name,$round]=$scpu
  R_RSS[$name,$round]=$rss
  R_TREE[$name,$round]=$tree
  R_HWM[$name,$round]=$hwm
  detail=
  case $method in
    pgferry)
      A=$dir
      pgferry_phases "$start" "$end" >"$dir/phases.txt" # sets PH_*
      PGFERRY_PHASES[$name,$round]=$(cat "$dir/phases.txt")
      R_DATA[$name,$round]=$PH_DATA
      R_INDEX[$name,$round]=$PH_INDEX
      R_PH_START[$name,$round]=$PH_START
      R_PH_SCHEMA[$name,$round]=$PH_SCHEMA
      R_PH_VERIFY[$name,$round]=$PH_VERIFY
      R_PH_FINISH[$name,$round]=$PH_FINISH
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

# run_rounds NAME…: one interleaved run: every name once per round, the order rotated by one
# each round, so that a drift of the machine's speed spreads over all of them.
run_rounds() {
  local round i name order=("$@")
  say "methods: ${order[*]}; $ROUNDS round(s), order rotated each round"
  for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < ${#order[@]}; i++)); do
      name=${order[$(((i + round - 1) % ${#order[@]}))]}
      if [ "$name" = pgcopydb ] && [ -n "$SKIPPED_PGCOPYDB" ]; then continue; fi
      run_method "$name" "$round"
    done
  done
}

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
# put_median ARRAY KEY NUMBER…: ARRAY[KEY] = their median.
put_median() {
  local -n out=$1
  out[$2]=$(median "${@:3}")
}
# summarize NAME…: the medians (maxima for RSS) over the rounds into M_*[NAME], and
# M_CHECK[NAME]: "exact ×ROUNDS", or how many runs ended how.
declare -A M_WALL M_CPU M_CCPU M_SCPU M_RSS M_TREE M_HWM M_DATA M_INDEX M_CHECK
declare -A M_PH_START M_PH_SCHEMA M_PH_VERIFY M_PH_FINISH
summarize() {
  local name j w cc sc d ix rs tr hw ck tot a
  for name in "$@"; do
    mapfile -t w < <(values "$name" R_WALL)
    mapfile -t cc < <(values "$name" R_CCPU)
    mapfile -t sc < <(values "$name" R_SCPU)
    mapfile -t d < <(values "$name" R_DATA)
    mapfile -t ix < <(values "$name" R_INDEX)
    mapfile -t rs < <(values "$name" R_RSS)
    mapfile -t tr < <(values "$name" R_TREE)
    mapfile -t hw < <(values "$name" R_HWM)
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
    M_HWM[$name]=$(maxof "${hw[@]}")
    for a in START SCHEMA VERIFY FINISH; do
      mapfile -t d < <(values "$name" "R_PH_$a")
      put_median "M_PH_$a" "$name" "${d[@]}"
    done
    if [ ${#ck[@]} -eq 0 ]; then
      M_CHECK[$name]="not run"
    elif printf '%s\n' "${ck[@]}" | grep -qv '^exact$'; then
      M_CHECK[$name]="$(printf '%s\n' "${ck[@]}" | sort | uniq -c | awk '{ printf "%s%s×%s", s, $1, $2; s = ", " }')"
    else
      M_CHECK[$name]="exact ×${#ck[@]}"
    fi
  done
}
# ratio X Y: X / Y as "1.23x", or - when either is missing
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x + 0 > 0 && y + 0 > 0) printf "%.2fx", x / y; else print "-" }'; }
has_run() { [ "${M_WALL[$1]:-"-"}" != - ]; }
verdict_part() { # label value limit
  awk -v l="$1" -v v="$2" -v m="$3" 'BEGIN { if (v == "-" || v == "") printf "%s: not measured", l
    else printf "%s %s ≤ %sx: %s", l, v, m, (substr(v, 1, length(v) - 1) + 0 <= m + 0) ? "PASS" : "FAIL" }'
}

export -f sq mark method_pgferry method_dump method_dumpdir
