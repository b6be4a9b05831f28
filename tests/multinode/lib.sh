# Sourced by the tests of tests/multinode: two simulated hosts (tools/multinode/hosts.sh) for one test.
#   source lib.sh <hosts.sh> <rsh.sh>     sets T (scratch), HOSTS, RSH; `need_hosts CASE...` then starts them
# need_hosts skips the test (exit 0, a JUnit XML whose cases are all skipped, so tools/test.sh counts it as
# skipped) only when the kernel refuses network namespaces; the hosts are deleted on exit, failure included.
HOSTS="$(realpath "$1")"
RSH="$(realpath "$2")"
T="${TEST_TMPDIR:-$(mktemp -d)}"
export TMPDIR="$T" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
unset TEST_PREMATURE_EXIT_FILE
H=""  # the hosts' directory once they are up
# mpirun notices a lost daemon only through TCP keepalive on its control connections (default: 300 s idle, then
# 9 probes 20 s apart, 8 minutes in all); until then a job whose host was cut off stays in its abort (measured:
# with the keepalive starting after the ranks' own abort, mpirun was still there minutes later). Here 5 s + 3 x
# 2 s, as the README recommends (keepalive time + probes x interval about parallel.timeout_s).
export OMPI_MCA_oob_tcp_keepalive_time=5 OMPI_MCA_oob_tcp_keepalive_intvl=2 OMPI_MCA_oob_tcp_keepalive_probes=3

fail() { echo "FAIL: $*" >&2; exit 1; }
show() { echo "--- $1:" >&2; tail -n "${2:-40}" "$1" >&2; echo "---" >&2; }

skip_all() {  # skip_all REASON CASE...
  local reason="$1" xml="${XML_OUTPUT_FILE:-}" c
  shift
  echo "SKIPPED: $reason"
  [[ -n "$xml" ]] || return 0
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuites tests=\"$#\" failures=\"0\" errors=\"0\" skipped=\"$#\">"
    echo "<testsuite name=\"multinode\" tests=\"$#\" failures=\"0\" errors=\"0\" skipped=\"$#\">"
    for c in "$@"; do
      echo "<testcase name=\"$c\" classname=\"multinode\" status=\"notrun\" result=\"skipped\"><skipped message=\"${reason//\"/&quot;}\"/></testcase>"
    done
    echo "</testsuite></testsuites>"
  } >"$xml"
}

stop_hosts() {
  local rc=$?
  trap - EXIT
  [[ -n "$H" ]] && "$HOSTS" down "$H"
  exit $rc
}

need_hosts() {  # need_hosts CASE...: starts the hosts, or skips the test if namespaces are refused
  local why
  if ! why="$("$HOSTS" check 2>&1)"; then
    skip_all "two simulated hosts need network namespaces: $why" "$@"
    exit 0
  fi
  H="$T/hosts"
  trap stop_hosts EXIT
  trap 'echo "interrupted" >&2; exit 143' TERM INT
  "$HOSTS" up "$H" >/dev/null || fail "hosts.sh up failed"
  export HYBRIDMOE_HOSTS_DIR="$H"
  set_mpirun
}

on_host() { "$HOSTS" exec "$H" "$@"; }
# "${MPIRUN[@]}" ARGS...: mpirun started on node0, 2 slots on each host (ranks 0-1 on node0, 2-3 on node1);
# a command, so that `timeout` can run it. set_mpirun fills it in once H is known.
set_mpirun() { MPIRUN=("$HOSTS" exec "$H" node0 mpirun --host node0:2,node1:2 --mca plm_rsh_agent "$RSH"); }
# Bytes node0's veth has received (TCP between the hosts goes through it, nothing else does).
# (/proc/net/dev is per network namespace; /sys/class/net would show the root namespace's links.)
veth_rx_bytes() { on_host node0 awk -F'[: ]+' '$2 == "veth0" { print $3 }' /proc/net/dev; }

# Tiny data and the tiny model of tests/parallel/train_mpi_test.sh, 20 steps, global batch 16 sequences.
python3 - "$T" <<'PY'
import struct, sys
text = open("/usr/share/common-licenses/GPL-3", "rb").read()
open(sys.argv[1] + "/train.bin", "wb").write(struct.pack("<%dH" % len(text), *text))
PY
BASE="data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 3 lr: 1e-2 } parallel { num_threads: 1 timeout_s: 60 }
train { steps: 20 } logging { log_interval: 1 } checkpoint { interval: 10 }"

# compare REF_DIR RUN_DIR [TOLERANCE]: the train records' loss, lm, lb and z of every step within TOLERANCE
# relative (default 1e-5); prints the worst difference.
compare() {
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "${3:-1e-5}" <<'PY'
import json, sys
def rows(p):
    return {r["step"]: r for r in map(json.loads, open(p)) if r["kind"] == "train"}
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert sorted(a) == sorted(b) and a, (sorted(a), sorted(b))
worst = {k: max(abs(a[s][k] - b[s][k]) / max(abs(a[s][k]), 1e-12) for s in a)
         for k in ("loss", "lm_loss", "lb_loss", "z_loss")}
assert max(worst.values()) <= float(sys.argv[3]), worst
print("%d steps, worst relative difference %.2e" % (len(a), max(worst.values())))
PY
}
