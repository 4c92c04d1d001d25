# Sourced by the bench scripts: starting and stopping servers, their CPU
# time, and the tools they need.

# listening_port STDOUT PID: prints the port that the server PID announced
# on its STDOUT file ("listening on http://HOST:PORT"), waiting up to 30 s.
# Fails if the server exits or says nothing in time.
listening_port() {
  local stdout=$1 pid=$2 line=
  for _ in $(seq 600); do
    line=$(grep -m1 '^listening on http://' "$stdout" 2>/dev/null || true)
    if [[ -n $line ]]; then
      echo "${line##*:}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# cpu_ticks PID: utime + stime of every thread of PID, in clock ticks.
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  local fields
  read -ra fields <<<"$stat"
  echo $((fields[11] + fields[12]))
}

# cpu_times CPU: "busy total steal" clock ticks of one CPU since boot, from /proc/stat.
cpu_times() {
  awk -v cpu="cpu$1" '$1 == cpu { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6, $9 }' /proc/stat
}

# target_directory ROOT: prints cargo's target directory for the workspace.
target_directory() {
  (cd "$1" && cargo metadata --format-version 1 --no-deps |
    "${PYTHON:-python3}" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
}

# kill_server_on_exit WORK: on exit, kills the server whose PID is in $pid
# (if any) and removes the scratch directory WORK.
kill_server_on_exit() {
  pid=
  scratch=$1
  trap 'if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$scratch"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# forget PID: drops PID from the caller's `started` array (it has been
# stopped, so the exit trap need not stop it).
forget() {
  local kept=() pid
  for pid in "${started[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
  started=("${kept[@]+"${kept[@]}"}")
}

# apt_install PACKAGE...: installs with apt-get when run as root (with the
# caller's `log`); fails otherwise.
apt_install() {
  command -v apt-get >/dev/null && [[ $(id -u) == 0 ]] || return 1
  log "installing $* with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >&2
}
