#!/usr/bin/env bash
# docker-up.sh - make a Docker engine answer here, for reflowes' docker executor and its tests.
#
# Idempotent; every step is skipped when its result exists (re-run: ~0.1-0.3 s):
#   1. apt: docker.io + busybox-static (apt-get update first when a package has no candidate);
#   2. dockerd, when nothing answers on $DOCKER_SOCK: setsid nohup, --iptables=false --bridge=none
#      (no host firewall/bridge changes; containers get no network, network_mode="host" if needed);
#   3. waits until the engine answers (fails fast with the log tail if dockerd dies);
#   4. imports $IMAGE (local/busybox:1) from /bin/busybox with ALL applets (docker import, no
#      registry). An image of that name without our label (e.g. a 7-applet one) is replaced by the
#      full one, a superset.
#
# --live-restore is deliberately OFF: reflowes treats "engine stopped answering" as the death of
# every alloc on it (AllocDied -> tasks requeued). Containers surviving a dockerd restart would then
# run twice; without live-restore they die with the engine. Set DOCKERD_FLAGS to change this.
#
# A second, independent engine (tests use one to stop/restart safely):
#   DOCKER_SOCK=/run/rfx2.sock DOCKER_DATA_ROOT=/var/lib/rfx2 DOCKER_EXEC_ROOT=/run/rfx2 \
#   DOCKER_PIDFILE=/run/rfx2.pid DOCKERD_LOG=/tmp/rfx2.log scripts/docker-up.sh
# Knobs [defaults]: DOCKER_SOCK [/var/run/docker.sock] DOCKER_DATA_ROOT [/var/lib/docker]
#   DOCKER_EXEC_ROOT [/var/run/docker] DOCKER_PIDFILE [/var/run/docker.pid]
#   DOCKERD_LOG [/var/log/dockerd.log] DOCKERD_FLAGS [--iptables=false --bridge=none]
#   IMAGE [local/busybox:1; "none" skips the import] WAIT_TIMEOUT [60] SKIP_APT [0]
set -euo pipefail

DOCKER_SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
DOCKER_DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
DOCKER_EXEC_ROOT=${DOCKER_EXEC_ROOT:-/var/run/docker}
DOCKER_PIDFILE=${DOCKER_PIDFILE:-/var/run/docker.pid}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKERD_FLAGS=${DOCKERD_FLAGS:---iptables=false --bridge=none}
IMAGE=${IMAGE:-local/busybox:1}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
SKIP_APT=${SKIP_APT:-0}
IMAGE_LABEL=reflowes.busybox=full

export DOCKER_HOST="unix://${DOCKER_SOCK}" DEBIAN_FRONTEND=noninteractive
# Debian's /usr/bin/docker matches the 20.10 engine; prefer it when both exist.
DOCKER=/usr/bin/docker; [ -x "$DOCKER" ] || DOCKER=docker

t0=${EPOCHREALTIME/./}
say() { local d=$(( ${EPOCHREALTIME/./} - t0 )); printf '[docker-up %d.%03ds] %s\n' \
  $((d / 1000000)) $(((d / 1000) % 1000)) "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (dockerd and apt need it)"

# -------------------------------------------------------------------- 1. packages
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if [ "$SKIP_APT" != 1 ]; then
  missing=()
  for p in docker.io busybox-static; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    for p in "${missing[@]}"; do
      pol=$(apt-cache policy "$p" 2>/dev/null || true)
      if [[ "$pol" != *Candidate:* || "$pol" == *"Candidate: (none)"* ]]; then
        say "apt-get update (no candidate for $p)"
        apt-get update -q -o DPkg::Lock::Timeout=120 >/tmp/docker-up-apt.log 2>&1 \
          || die "apt-get update failed; see /tmp/docker-up-apt.log"
        break
      fi
    done
    say "apt-get install ${missing[*]}"
    # docker.io's postinst cannot start the service here (no systemd): harmless, we start it below.
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 "${missing[@]}" \
      >>/tmp/docker-up-apt.log 2>&1 || die "apt-get install failed; see /tmp/docker-up-apt.log"
  fi
fi
command -v dockerd >/dev/null || die "dockerd not installed (apt-get install docker.io)"

# -------------------------------------------------------------------- 2. daemon
answers() { timeout 10 "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }
alive() {  # a running process, not a zombie (PID 1 here reaps late; kill -0 succeeds on zombies)
  local p=${1:-} st
  [ -n "$p" ] && [ -r "/proc/$p/stat" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

if answers; then
  say "engine answering on $DOCKER_SOCK"
else
  pid=$(cat "$DOCKER_PIDFILE" 2>/dev/null || true)
  if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    say "dockerd $pid is starting; waiting for it"
  else
    # Stale pidfiles (dead or zombie owners) make dockerd refuse to start, or make it wait ~15 s
    # for a containerd that is gone.
    rm -f "$DOCKER_PIDFILE"
    cpid="$DOCKER_EXEC_ROOT/containerd/containerd.pid"
    if [ -e "$cpid" ] && ! alive "$(cat "$cpid" 2>/dev/null || true)"; then rm -f "$cpid"; fi
    mkdir -p "$DOCKER_DATA_ROOT" "$DOCKER_EXEC_ROOT" "$(dirname "$DOCKER_SOCK")" "$(dirname "$DOCKERD_LOG")"
    say "starting dockerd on $DOCKER_SOCK ($DOCKERD_FLAGS; log $DOCKERD_LOG)"
    # shellcheck disable=SC2086  # DOCKERD_FLAGS is a word list on purpose
    setsid nohup dockerd -H "unix://$DOCKER_SOCK" --data-root "$DOCKER_DATA_ROOT" \
      --exec-root "$DOCKER_EXEC_ROOT" --pidfile "$DOCKER_PIDFILE" $DOCKERD_FLAGS \
      >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
  fi
  # -------------------------------------------------------------------- 3. wait
  deadline=$(( $(date +%s) + WAIT_TIMEOUT ))
  until answers; do
    if ! alive "$pid" && ! alive "$(cat "$DOCKER_PIDFILE" 2>/dev/null || true)"; then
      tail -n 8 "$DOCKERD_LOG" >&2; die "dockerd exited during startup (log above)"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 30 "$DOCKERD_LOG" >&2; die "no answer in ${WAIT_TIMEOUT}s"; }
    sleep 0.1
  done
  say "engine answering (dockerd pid $(cat "$DOCKER_PIDFILE" 2>/dev/null || echo '?'))"
fi

# -------------------------------------------------------------------- 4. image
[ "$IMAGE" = none ] && { say "done (no image wanted)"; exit 0; }
label=$("$DOCKER" image inspect -f '{{index .Config.Labels "reflowes.busybox"}}' "$IMAGE" 2>/dev/null || true)
if [ "$label" = full ]; then
  say "$IMAGE present"
else
  [ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/bin "$root"/etc "$root"/tmp "$root"/root
  chmod 1777 "$root"/tmp
  cp /bin/busybox "$root"/bin/busybox
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root"/etc/passwd
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root"/etc/group
  tar -C "$root" -c . | "$DOCKER" import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' \
    --change "LABEL $IMAGE_LABEL" - "$IMAGE" >/dev/null
  "$DOCKER" run --rm --network none "$IMAGE" sh -c 'true && head -c 1 /dev/zero | tail -c 1 >/dev/null' \
    || die "smoke run of $IMAGE failed"
  say "imported $IMAGE ($(/bin/busybox --list | wc -l) applets), smoke run ok"
fi
say "done"
