#!/usr/bin/env bash
# payroute load benchmark (issue 8): one run reports everything.
#
#   benches/load.sh                 # from the repository root (or anywhere: it cd's there)
#   benches/load.sh --write [FILE]  # also write the Markdown table (default target/load/results.md)
#
# What it does, in order:
#   1. installs what is missing (Debian: wrk — Debian's wrk 4, not wrk2 — openssl, curl),
#      builds `cargo build --release` and the `signing` and `notify` benches;
#   2. the crypto floor, on a quiet machine: `openssl speed -seconds 3 rsa2048` (one core) and
#      `cargo bench --bench signing` (RSA-2048 sign / verify with aws-lc-rs, payroute's library);
#   3. writes a bench config into a temp dir (store: SQLite on disk in that temp dir, the
#      sandbox's TEST-ONLY keys from config/sandbox/, one WeChat Pay direct channel pointing at a
#      separately started `payroute sandbox`, no rate limits, no built-in sandbox), starts the
#      sandbox and `payroute serve`, waits for them;
#   4. phases, each a wrk run with a Lua script from benches/load/: create (POST /v1/payments,
#      wechat_native: one RSA sign + one verify per create), GET of a stored payment, GET
#      ?refresh=true (one sign + one verify), each at max rate and then at about half of it
#      (paced with wrk's delay() hook: Debian's wrk has no fixed-rate mode), and GET with 1,000
#      connections; per phase: req/s, p50/p99, non-2xx answers, payroute's CPU per request
#      (utime+stime of its PID from /proc/PID/stat, before/after, ÷ requests completed) and its
#      peak RSS (VmHWM); the p99 of payroute_overhead_seconds{route="create_payment"} during
#      the half-rate create phase, from the histogram buckets diffed before/after;
#   5. stops both processes, runs the notification-ingest driver (`cargo bench --bench notify`,
#      store on disk) and prints one summary table.
#
# Knobs (environment): LOAD_DURATION (seconds per phase, 10), LOAD_THREADS (wrk threads, 2),
# LOAD_CONNS (connections at max rate, 64), LOAD_HALF_CONNS (connections at half rate, 16),
# LOAD_BIG_CONNS (1000), LOAD_GET_N (stored payments GET cycles over, 200),
# LOAD_API_PORT / LOAD_ADMIN_PORT / LOAD_SANDBOX_PORT (18080 / 19901 / 18090),
# NOTIFY_BENCH_N / NOTIFY_BENCH_C (5000 / 32), LOAD_SKIP_NOTIFY=1, LOAD_SKIP_FLOOR=1,
# LOAD_KEEP=1 (keep the temp dir and logs), LOAD_BIN=PATH (time that payroute binary instead of
# building this checkout's: before/after pairs),
# LOAD_STORE=sqlite|postgres (postgres: a fresh schema in LOAD_PG_URL, by default
# postgres://postgres@127.0.0.1:5432/test, pool_size 16, dropped at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WRITE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --write)
      WRITE="target/load/results.md"
      if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then WRITE="$2"; shift; fi
      ;;
    -h | --help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "load.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

DURATION=${LOAD_DURATION:-10}
THREADS=${LOAD_THREADS:-2}
CONNS=${LOAD_CONNS:-64}
HALF_CONNS=${LOAD_HALF_CONNS:-16}
BIG_CONNS=${LOAD_BIG_CONNS:-1000}
GET_N=${LOAD_GET_N:-200}
API_PORT=${LOAD_API_PORT:-18080}
ADMIN_PORT=${LOAD_ADMIN_PORT:-19901}
SANDBOX_PORT=${LOAD_SANDBOX_PORT:-18090}
STORE=${LOAD_STORE:-sqlite}
PG_URL=${LOAD_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_SCHEMA=""
case "$STORE" in sqlite | postgres) ;; *) echo "load.sh: LOAD_STORE=$STORE is not sqlite or postgres" >&2; exit 2 ;; esac
NOTIFY_N=${NOTIFY_BENCH_N:-5000}
NOTIFY_C=${NOTIFY_BENCH_C:-32}
API_KEY=load-shop-key-TEST-ONLY-0123456789
ADMIN_TOKEN=load-admin-token-TEST-ONLY-0123456789
API="http://127.0.0.1:$API_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
CLK_TCK=$(getconf CLK_TCK)

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'load.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. tools and build
install_pkgs() {
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get: install it by hand"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "missing $* and not root (no sudo): install it by hand"
    sudo=(sudo)
  fi
  say "installing $*"
  "${sudo[@]}" apt-get install -y "$@" >/dev/null 2>&1 \
    || { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" apt-get install -y "$@" >/dev/null; } \
    || die "apt-get install $* failed"
}
need() { command -v "$1" >/dev/null 2>&1 || install_pkgs "$2"; }
need wrk wrk
need openssl openssl
need curl curl
[ "$STORE" = sqlite ] || need psql postgresql-client
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"

# wrk and payroute each hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -gt $((BIG_CONNS + 200)) ] \
  || die "open-file limit $(ulimit -n) is below $((BIG_CONNS + 200)); raise it (ulimit -n)"

if [ -n "${LOAD_BIN:-}" ]; then
  # Another build of payroute (e.g. the commit before a change, for a before/after pair):
  # the bench config and scripts are this checkout's, the binary under test is that one.
  BIN=$(cd "$(dirname "$LOAD_BIN")" && pwd)/$(basename "$LOAD_BIN")
  say "binary under test: $BIN (LOAD_BIN; not rebuilt)"
else
  say "building (cargo build --release)"
  cargo build --release --locked >&2
  BIN="$ROOT/target/release/payroute"
fi
if [ "${LOAD_SKIP_FLOOR:-0}" != 1 ] || [ "${LOAD_SKIP_NOTIFY:-0}" != 1 ]; then
  say "building the signing and notify benches"
  cargo bench --locked --no-run --bench signing --bench notify 2>&1 | tail -n 2 >&2
fi
[ -x "$BIN" ] || die "$BIN was not built"

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$API_PORT" "$ADMIN_PORT" "$SANDBOX_PORT"; do
  if port_taken "$p"; then
    die "port $p on 127.0.0.1 is taken (LOAD_API_PORT / LOAD_ADMIN_PORT / LOAD_SANDBOX_PORT choose others)"
  fi
done

# ---------------------------------------------------------------- 2. crypto floor
OSSL_SIGN=n/a OSSL_VERIFY=n/a AWS_SIGN_US=n/a AWS_VERIFY_US=n/a CPU_SIGN_US=n/a CPU_VERIFY_US=n/a
if [ "${LOAD_SKIP_FLOOR:-0}" != 1 ]; then
  say "crypto floor: openssl speed -seconds 3 rsa2048"
  ossl=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ {print $(NF-1), $NF}')
  [ -n "$ossl" ] || die "could not read 'openssl speed rsa2048' output"
  read -r OSSL_SIGN OSSL_VERIFY <<<"$ossl"
  say "crypto floor: cargo bench --bench signing (aws-lc-rs)"
  crit=$(cargo bench --locked --bench signing -- --warm-up-time 1 --measurement-time 3 rsa2048_ 2>&1)
  # criterion: "rsa2/rsa2048_sign   time:   [lo unit mid unit hi unit]" (the name may be on its own line)
  crit_us() {
    printf '%s\n' "$crit" | awk -v name="$1" '
      index($0, name) { found = 1 }
      found && /time:/ {
        sub(/.*\[/, ""); v = $3; u = $4
        if (u == "ns") v /= 1000; else if (u == "ms") v *= 1000; else if (u == "s") v *= 1e6
        printf "%.1f", v; exit }'
  }
  AWS_SIGN_US=$(crit_us rsa2/rsa2048_sign)
  AWS_VERIFY_US=$(crit_us rsa2/rsa2048_verify)
  { [ -n "$AWS_SIGN_US" ] && [ -n "$AWS_VERIFY_US" ]; } || die "could not read the signing bench: $crit"
  # The floor payroute's CPU per request is compared with: the same library, in CPU time
  # (criterion's figures are wall-clock: on a busy machine they include waiting for a core).
  say "crypto floor: SIGNING_CPU=1 cargo bench --bench signing (aws-lc-rs, CPU time)"
  cpu=$(SIGNING_CPU=1 cargo bench --locked --bench signing 2>&1)
  CPU_SIGN_US=$(printf '%s\n' "$cpu" | awk '$1 == "rsa2048_sign_cpu_us" { print $2 }')
  CPU_VERIFY_US=$(printf '%s\n' "$cpu" | awk '$1 == "rsa2048_verify_cpu_us" { print $2 }')
  { [ -n "$CPU_SIGN_US" ] && [ -n "$CPU_VERIFY_US" ]; } || die "could not read the signing bench's CPU figures: $cpu"
fi

# ---------------------------------------------------------------- 3. config and processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/payroute-load.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ -n "$PG_SCHEMA" ]; then psql "$PG_URL" -qc "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true; fi
  if [ "${LOAD_KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

KEYS="$ROOT/config/sandbox"
# The store in a directory of its own, as in the shipped layout (config/ and data/): payroute
# watches its config file's directory, and every WAL write there would wake that watcher.
mkdir -p "$TMP/data"
if [ "$STORE" = postgres ]; then
  PG_SCHEMA="payroute_load_$$"
  psql "$PG_URL" -qc "SELECT 1" >/dev/null 2>&1 || die "PostgreSQL not reachable at $PG_URL (LOAD_PG_URL)"
  STORE_YAML="{ kind: postgres, url: \"$PG_URL\", pool_size: 16, schema: $PG_SCHEMA }"
else
  STORE_YAML="{ kind: sqlite, path: $TMP/data/payroute.db }"
fi
cat >"$TMP/payroute.yaml" <<EOF
# Written by benches/load.sh. TEST-ONLY keys (config/sandbox/).
server:
  listen: 127.0.0.1:$API_PORT
  admin_listen: 127.0.0.1:$ADMIN_PORT
  public_base_url: http://127.0.0.1:$API_PORT
  max_body_bytes: 65536
  max_connections: 20000
  max_in_flight: 20000
admin: { token: $ADMIN_TOKEN }
store: $STORE_YAML
shops:
  - id: load-shop
    api_key: $API_KEY
    merchants: [m_1001]
    webhook: { url: "http://127.0.0.1:9/unused", secret: load-webhook-secret-TEST-ONLY-0123 }
merchants:
  m_1001: { wechat_sub_mchid: "1900000109" }
channels:
  m1001_wechat:
    kind: wechatpay_v3
    mode: direct
    merchants: [m_1001]
    base_url: http://127.0.0.1:$SANDBOX_PORT
    mchid: "1900000109"
    appid: wx2421b1c4370ec43b
    serial_no: 3775B6A45ACD588826D15E583A95F5DD
    private_key: file:$KEYS/m1001_apiclient_key.pem
    wechatpay_public_key: file:$KEYS/wechatpay_pub_key.pem
    wechatpay_public_key_id: PUB_KEY_ID_SANDBOX_TEST_ONLY
    apiv3_key: apiv3-1900000109-TEST-ONLY000000
    fee_rate: 0.0038
    timeout: 5s
routing:
  rules:
    - name: m1001-own-wechat
      when: { merchant: [m_1001], family: wechat }
      to: m1001_wechat
  default: { wechat: m1001_wechat }
# No limits: (nothing shed). Open orders are first reconciled after an hour, so the
# reconciler does not query the sandbox during the run.
reconcile: { tiers: [ { until: 24h, every: 1h } ] }
EOF

# server.max_in_flight (load shedding) is newer than this script: drop it where the binary
# does not know it (its default, 1,024, still serves 1,000 connections unshed).
if ! "$BIN" check --config "$TMP/payroute.yaml" >"$TMP/check.log" 2>&1; then
  sed -i '/^  max_in_flight:/d' "$TMP/payroute.yaml"
  "$BIN" check --config "$TMP/payroute.yaml" >"$TMP/check.log" 2>&1 \
    || die "the bench config does not check: $(cat "$TMP/check.log")"
fi

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what not up within ${secs}s (logs in $TMP, LOAD_KEEP=1 keeps them)"
    sleep 0.1
  done
}

say "starting the sandbox (payroute sandbox) on :$SANDBOX_PORT and payroute on :$API_PORT"
RUST_LOG=warn "$BIN" sandbox --config "$TMP/payroute.yaml" --listen "127.0.0.1:$SANDBOX_PORT" \
  >"$TMP/sandbox.log" 2>&1 &
SANDBOX_PID=$!
PIDS+=("$SANDBOX_PID")
wait_for "the sandbox" 20 port_taken "$SANDBOX_PORT"
RUST_LOG=warn "$BIN" serve --config "$TMP/payroute.yaml" >"$TMP/payroute.log" 2>&1 &
PR_PID=$!
PIDS+=("$PR_PID")
wait_for "payroute /healthz" 30 curl -fsS --max-time 2 "$ADMIN/healthz"
kill -0 "$SANDBOX_PID" || die "the sandbox exited: $(tail -5 "$TMP/sandbox.log")"

# ---------------------------------------------------------------- 4. phases
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$PR_PID/stat"; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$PR_PID/status"; }
field() { # key, LOADRESULT line
  printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'
}

export LOAD_LUA_DIR="$ROOT/benches/load" LOAD_API_KEY="$API_KEY"
ROWS=()      # phase|conns|rate target|req/s|requests|non2xx|sockerr|p50|p99|cpu µs/req|VmHWM
declare -A CPU_US RPS PG_CPU_US
# With LOAD_STORE=postgres, the CPU of the PostgreSQL server's processes too (they share the
# machine): every process named postgres, before and after each phase.
pg_cpu_ticks() {
  local p
  for p in $(pgrep -x postgres); do awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null; done \
    | awk '{ s += $1 } END { print s + 0 }'
}

# phase NAME SCRIPT CONNS RATE(0 = max) [env...]
phase() {
  local name=$1 script=$2 conns=$3 rate=$4; shift 4
  local threads=$THREADS
  [ "$conns" -ge "$threads" ] || threads=$conns
  local before after out line
  kill -0 "$PR_PID" 2>/dev/null || die "payroute exited: $(tail -5 "$TMP/payroute.log")"
  before=$(cpu_ticks)
  local pg_before=0
  [ "$STORE" = sqlite ] || pg_before=$(pg_cpu_ticks)
  if [ "$rate" = 0 ]; then
    out=$(env "$@" LOAD_CONNS="$conns" \
      timeout $((DURATION + 60)) wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 10s \
      -s "benches/load/$script" "$API") || die "wrk failed in phase $name: $out"
  else
    out=$(env "$@" LOAD_CONNS="$conns" LOAD_RATE="$rate" \
      timeout $((DURATION + 60)) wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 10s \
      -s "benches/load/$script" "$API") || die "wrk failed in phase $name: $out"
  fi
  after=$(cpu_ticks)
  local pg_after=0
  [ "$STORE" = sqlite ] || pg_after=$(pg_cpu_ticks)
  line=$(printf '%s\n' "$out" | grep '^LOADRESULT' || true)
  [ -n "$line" ] || die "no result from wrk in phase $name: $out"
  local n rps cpu
  n=$(field requests "$line")
  rps=$(field rps "$line")
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "n/a" }')
  CPU_US[$name]=$cpu
  PG_CPU_US[$name]=$(awk -v t=$((pg_after - pg_before)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "n/a" }')
  RPS[$name]=$rps
  ROWS+=("$name|$conns|$([ "$rate" = 0 ] && echo max || echo "$rate/s paced")|$rps|$n|$(field non2xx "$line")|$(field sockerr "$line")|$(field p50_ms "$line")|$(field p99_ms "$line")|$cpu|$(hwm_mib)")
  printf '%-22s %s cpu_us_per_req=%s vmhwm_mib=%s\n' "$name" "${line#LOADRESULT }" "$cpu" "$(hwm_mib)" >&2
}

half_of() { awk -v r="$1" 'BEGIN { h = int(r / 2); if (h < 1) h = 1; print h }'; }

metrics() { curl -fsS --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN/metrics"; }
# buckets of payroute_overhead_seconds{route="create_payment"}: "le count" lines
overhead_buckets() {
  printf '%s\n' "$1" | awk '
    /^payroute_overhead_seconds_bucket\{/ && /route="create_payment"/ {
      le = $0; sub(/.*le="/, "", le); sub(/".*/, "", le); print le, $NF }'
}
store_wait_buckets() {
  printf '%s\n' "$1" | awk '
    /^payroute_store_write_seconds_bucket\{/ {
      le = $0; sub(/.*le="/, "", le); sub(/".*/, "", le); print le, $NF }'
}
# p99 (or the quantile P) from two bucket snapshots, linearly interpolated inside the bucket
# (as histogram_quantile)
overhead_p99() {
  local before=$1 after=$2
  join <(printf '%s\n' "$before" | sort) <(printf '%s\n' "$after" | sort) \
    | awk '{ le = ($1 == "+Inf") ? 1e300 : $1 + 0; print le, $3 - $2 }' | sort -g \
    | awk -v q="${P:-0.99}" '
      { le[NR] = $1; c[NR] = $2; n = NR }
      END {
        total = c[n]; if (total <= 0) { print "n/a (no observations)"; exit }
        want = q * total; prev_le = 0; prev_c = 0
        for (i = 1; i <= n; i++) {
          if (c[i] >= want) {
            if (le[i] >= 1e300) { printf "> %.2f ms (above the last bucket)", prev_le * 1000; exit }
            v = prev_le + (le[i] - prev_le) * (want - prev_c) / (c[i] - prev_c)
            printf "%.2f ms (bucket %g–%g ms, %d observations)", v * 1000, prev_le * 1000, le[i] * 1000, total; exit
          }
          prev_le = le[i]; prev_c = c[i]
        }
      }'
}

say "warm-up: creates for 2 s"
DURATION_SAVED=$DURATION
DURATION=2
phase warmup create.lua "$CONNS" 0 LOAD_TAG=w
unset 'ROWS[-1]'
DURATION=$DURATION_SAVED

say "create: max rate ($CONNS connections, ${DURATION}s)"
phase create-max create.lua "$CONNS" 0 LOAD_TAG=cm
CREATE_HALF=$(half_of "${RPS[create-max]}")
say "create: paced at about half ($CREATE_HALF/s over $HALF_CONNS connections)"
m_before=$(metrics)
phase create-half create.lua "$HALF_CONNS" "$CREATE_HALF" LOAD_TAG=ch
m_after=$(metrics)
if printf '%s\n' "$m_after" | grep -q '^payroute_overhead_seconds_bucket'; then
  OVERHEAD_P99=$(overhead_p99 "$(overhead_buckets "$m_before")" "$(overhead_buckets "$m_after")")
else
  OVERHEAD_P99="n/a (metric absent)"
fi
# The store's share of it: each write's wait for its commit (two writes per create).
if printf '%s\n' "$m_after" | grep -q '^payroute_store_write_seconds_bucket'; then
  STORE_WAIT_P99=$(overhead_p99 "$(store_wait_buckets "$m_before")" "$(store_wait_buckets "$m_after")")
  STORE_WAIT_P50=$(P=0.5 overhead_p99 "$(store_wait_buckets "$m_before")" "$(store_wait_buckets "$m_after")")
else
  STORE_WAIT_P99="n/a (metric absent)" STORE_WAIT_P50=n/a
fi

say "pre-creating $GET_N payments for the GET phases"
for i in $(seq 0 $((GET_N - 1))); do
  no=$(printf 'G%05d' "$i")
  code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -X POST "$API/v1/payments" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
    -d "{\"merchant_id\":\"m_1001\",\"out_trade_no\":\"$no\",\"amount\":1999,\"currency\":\"CNY\",\"method\":\"wechat_native\",\"description\":\"load bench mug\"}")
  case "$code" in 200 | 201) ;; *) die "pre-create $no answered $code" ;; esac
done
export LOAD_GET_N="$GET_N" LOAD_GET_PREFIX=G

say "GET stored: max rate"
phase get-max get.lua "$CONNS" 0
GET_HALF=$(half_of "${RPS[get-max]}")
say "GET stored: paced at about half ($GET_HALF/s)"
phase get-half get.lua "$HALF_CONNS" "$GET_HALF"

say "GET ?refresh=true: max rate"
phase refresh-max get.lua "$CONNS" 0 LOAD_REFRESH=true
REFRESH_HALF=$(half_of "${RPS[refresh-max]}")
say "GET ?refresh=true: paced at about half ($REFRESH_HALF/s)"
phase refresh-half get.lua "$HALF_CONNS" "$REFRESH_HALF" LOAD_REFRESH=true

# VmHWM so far is the peak of the create and refresh phases; reset it to the current RSS
# (clear_refs 5) so that the next reading is the peak while 1,000 connections are served.
RUN_PEAK_RSS=$(hwm_mib)
RSS_BEFORE_BIG=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$PR_PID/status")
if echo 5 >"/proc/$PR_PID/clear_refs" 2>/dev/null; then HWM_RESET=yes; else HWM_RESET=no; fi
say "GET stored: $BIG_CONNS connections (RSS before: $RSS_BEFORE_BIG MiB; VmHWM reset: $HWM_RESET)"
phase "get-${BIG_CONNS}conns" get.lua "$BIG_CONNS" 0
PEAK_RSS=$(hwm_mib)
RUN_PEAK_RSS=$(awk -v a="$RUN_PEAK_RSS" -v b="$PEAK_RSS" 'BEGIN { print (a > b) ? a : b }')

cleanup_processes() {
  kill "$PR_PID" "$SANDBOX_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$PR_PID" 2>/dev/null || kill -0 "$SANDBOX_PID" 2>/dev/null || break
    sleep 0.1
  done
}
cleanup_processes

# ---------------------------------------------------------------- 5. notification ingest
NOTIFY_LINE="n/a (LOAD_SKIP_NOTIFY=1)"
NOTIFY_RATE=n/a NOTIFY_CPU=n/a NOTIFY_P50=n/a NOTIFY_P99=n/a
if [ "${LOAD_SKIP_NOTIFY:-0}" != 1 ]; then
  say "notification ingest: cargo bench --bench notify (N=$NOTIFY_N, C=$NOTIFY_C, store on disk)"
  nout=$(NOTIFY_BENCH_ONLY=disk NOTIFY_BENCH_N="$NOTIFY_N" NOTIFY_BENCH_C="$NOTIFY_C" \
    timeout 300 cargo bench --locked --bench notify 2>&1) || die "notify bench failed: $nout"
  NOTIFY_LINE=$(printf '%s\n' "$nout" | grep -A1 '^notify/disk' || true)
  [ -n "$NOTIFY_LINE" ] || die "no figures from the notify bench: $nout"
  NOTIFY_RATE=$(printf '%s\n' "$NOTIFY_LINE" | sed -n 's/.*: \([0-9.]*\) notifications\/s.*/\1/p')
  NOTIFY_P50=$(printf '%s\n' "$NOTIFY_LINE" | sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p')
  NOTIFY_P99=$(printf '%s\n' "$NOTIFY_LINE" | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
  NOTIFY_CPU=$(printf '%s\n' "$NOTIFY_LINE" | sed -n 's/.*CPU \([0-9.]*\) ms\/notification.*/\1/p' \
    | awk '{ printf "%.0f", $1 * 1000 }')
fi

# ---------------------------------------------------------------- summary
FLOOR_US=n/a
OSSL_FLOOR_US=n/a
if [ "$CPU_SIGN_US" != n/a ]; then
  FLOOR_US=$(awk -v s="$CPU_SIGN_US" -v v="$CPU_VERIFY_US" 'BEGIN { printf "%.1f", s + v }')
  # openssl speed counts CPU (user) time unless -elapsed is given
  OSSL_FLOOR_US=$(awk -v s="$OSSL_SIGN" -v v="$OSSL_VERIFY" 'BEGIN { printf "%.1f", 1e6 / s + 1e6 / v }')
fi
ratio() { # cpu µs per create → ratio to the floor
  if [ "$FLOOR_US" = n/a ] || [ "$1" = n/a ]; then echo n/a; else
    awk -v c="$1" -v f="$FLOOR_US" 'BEGIN { printf "%.2f", c / f }'
  fi
}
RATIO_MAX=$(ratio "${CPU_US[create-max]}")
RATIO_HALF=$(ratio "${CPU_US[create-half]}")
verdict() { # value op limit
  awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {
    if (v !~ /^[0-9.]+$/) { print "n/a"; exit }
    if (op == "<") ok = (v + 0 < l + 0); else if (op == ">=") ok = (v + 0 >= l + 0); else ok = (v + 0 <= l + 0)
    print ok ? "met" : "MISSED" }'
}
OVERHEAD_MS=$(printf '%s' "$OVERHEAD_P99" | awk '{ print $1 }')

table() { # $1 = md for Markdown
  local md=${1:-} r
  if [ "$md" = md ]; then
    echo "| phase | conns | rate | req/s | requests | non-2xx | socket errors | p50 ms | p99 ms | payroute CPU µs/req | VmHWM so far, MiB |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
  else
    printf '%-16s %6s %-16s %9s %9s %7s %7s %8s %8s %9s %8s\n' phase conns rate req/s requests non2xx sockerr p50ms p99ms cpu_us/req hwm_MiB
    for r in "${ROWS[@]}"; do
      IFS='|' read -r -a f <<<"$r"
      printf '%-16s %6s %-16s %9s %9s %7s %7s %8s %8s %9s %8s\n' "${f[@]}"
    done
  fi
}

summary() {
  local md=${1:-}
  local b='' ; [ "$md" = md ] && b='- '
  echo "${b}store: $STORE$([ "$STORE" = postgres ] && echo " (pool_size 16, the local server: synchronous_commit=$(psql "$PG_URL" -Atc 'SHOW synchronous_commit' 2>/dev/null), fsync=$(psql "$PG_URL" -Atc 'SHOW fsync' 2>/dev/null))")"
  echo "${b}wrk: Debian's wrk 4 (no fixed-rate mode). 'max' = as fast as $CONNS connections go; 'paced' = each connection waits ~conns/rate s (jittered) between requests through wrk's Lua delay() hook, so the rate is about half the max; latency is measured from each send."
  echo "${b}crypto floor, one core: openssl speed rsa2048 (CPU time): $OSSL_SIGN sign/s, $OSSL_VERIFY verify/s (sign+verify $OSSL_FLOOR_US µs); aws-lc-rs, payroute's library (SIGNING_CPU=1 cargo bench --bench signing, CPU time): sign $CPU_SIGN_US µs, verify $CPU_VERIFY_US µs, sign+verify $FLOOR_US µs — the floor below; criterion's wall-clock figures for the same: sign $AWS_SIGN_US µs, verify $AWS_VERIFY_US µs"
  echo "${b}payroute CPU per create ÷ aws-lc-rs (1 sign + 1 verify) CPU: ${RATIO_MAX} at max rate, ${RATIO_HALF} at half rate (target ≤ 1.25: $(verdict "$RATIO_MAX" '<=' 1.25) at max, $(verdict "$RATIO_HALF" '<=' 1.25) at half)"
  echo "${b}GET of a stored payment, payroute CPU: ${CPU_US[get-max]} µs/req at max, ${CPU_US[get-half]} µs/req at half (target < 50 µs: $(verdict "${CPU_US[get-max]}" '<' 50) at max, $(verdict "${CPU_US[get-half]}" '<' 50) at half)"
  echo "${b}p99 of payroute_overhead_seconds{route=\"create_payment\"} at half the max create rate: $OVERHEAD_P99 (target < 2 ms: $(verdict "$OVERHEAD_MS" '<' 2))"
  echo "${b}of which the store, in the same phase: each write's wait for its commit (payroute_store_write_seconds; two writes per create): p50 $STORE_WAIT_P50, p99 $STORE_WAIT_P99"
  echo "${b}peak RSS (VmHWM) while $BIG_CONNS connections are served: $PEAK_RSS MiB (RSS before that phase $RSS_BEFORE_BIG MiB, VmHWM reset first: $HWM_RESET) (target < 64 MiB: $(verdict "$PEAK_RSS" '<' 64)); peak over the whole run (creates and refreshes at max rate included): $RUN_PEAK_RSS MiB"
  if [ "$STORE" = postgres ]; then
    echo "${b}PostgreSQL server CPU per request (its processes, same phases): create ${PG_CPU_US[create-max]} µs at max, ${PG_CPU_US[create-half]} µs at half; GET ${PG_CPU_US[get-max]} µs at max"
  fi
  echo "${b}notification ingest (cargo bench --bench notify, disk, N=$NOTIFY_N, C=$NOTIFY_C): $NOTIFY_RATE verified+stored/s, p50 $NOTIFY_P50 ms, p99 $NOTIFY_P99 ms, CPU $NOTIFY_CPU µs/notification (whole bench process: driver included) (target ≥ 1000/s: $(verdict "$NOTIFY_RATE" '>=' 1000))"
}

echo
echo "==================== payroute load benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
table
echo
summary

if [ -n "$WRITE" ]; then
  mkdir -p "$(dirname "$WRITE")"
  {
    echo "Run: \`benches/load.sh --write\` at $(date -u '+%Y-%m-%d %H:%M UTC') on commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, phases of ${DURATION}s."
    echo
    table md
    echo
    summary md
  } >"$WRITE"
  echo
  echo "Markdown written to $WRITE"
fi
