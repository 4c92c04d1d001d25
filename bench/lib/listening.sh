# Sourced by run.sh and profile.sh.

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
