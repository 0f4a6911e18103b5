#!/usr/bin/env bash
# run-provisioner.sh: one unattended `provisioner run`, for cron (docs/operations.md, "cron").
#
# 1. Sources a root-only env file that holds BRAZE_API_KEY (never the crontab, never argv),
#    and refuses it if group or others may read it.
# 2. Takes a job lock with `flock -n`: a second copy exits 75 at once, like the
#    provisioner's own state-store lock (both exist; the docs say when each matters).
# 3. Runs `provisioner run` as PROVISIONER_USER when started as root (the key reaches the
#    unprivileged process through its environment only), appending its JSON log lines to
#    PROVISIONER_LOG; SIGTERM and SIGINT are passed on, so the run finishes in-flight
#    requests and writes its outputs.
# 4. Says on stderr (which cron mails) only what needs a person: exit codes 1, 2, 4 and
#    anything unexpected. 0, 3, 75, 130 and 143 are quiet: the next night carries on.
# 5. Exits with the provisioner's own exit code.
#
# Settings: from the environment or the env file (a value in the env file wins).
#   PROVISIONER_ENV_FILE      env file to source              /etc/provisioner/provisioner.env
#   PROVISIONER_MANIFEST      manifest to provision           /etc/provisioner/campaigns.csv
#   PROVISIONER_OUT           output folder                   /var/lib/provisioner/out
#   PROVISIONER_STATE         state store                     /var/lib/provisioner/state.sqlite3
#   PROVISIONER_CONFIG        TOML config file                none
#   PROVISIONER_METRICS_FILE  node_exporter textfile (.prom)  none
#   PROVISIONER_LOG           log file to append to           /var/log/provisioner/provisioner.log
#                             (set it empty: logs go to stderr, so cron mails every run)
#   PROVISIONER_LOCK          job lock file                   /run/lock/provisioner.lock
#                             (set it empty: rely on the state store's lock alone)
#   PROVISIONER_USER          user to run as if started as root  provisioner
#                             (set it empty: run as whoever started the script)
#   PROVISIONER_BIN           the command, split on blanks    provisioner
# Arguments are passed on to `provisioner run` (e.g. --quota 80).
#
# Exit codes: the provisioner's (README, "Exit codes"); 2 and 75 also from this script
# itself (bad env file or user: nothing ran; job lock busy: another run is working).
set -euo pipefail

# A one-line JSON event in the provisioner's log shape (event, level, timestamp).
json_escape() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '%s' "$s"
}
log_event() { # level event message
	local line
	line=$(printf '{"event":"%s","level":"%s","message":"%s","timestamp":"%s"}' \
		"$2" "$1" "$(json_escape "$3")" "$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)")
	if [[ -n ${log_file:-} ]]; then
		printf '%s\n' "$line" >>"$log_file"
	else
		printf '%s\n' "$line" >&2
	fi
}
die() { # exit_code message: before the run, so nothing was sent
	printf 'run-provisioner: %s\n' "$2" >&2
	exit "$1"
}

env_file=${PROVISIONER_ENV_FILE:-/etc/provisioner/provisioner.env}
[[ -f $env_file && -r $env_file ]] ||
	die 2 "env file $env_file is missing or unreadable; create it (root:root, mode 0600) with BRAZE_API_KEY=..."
mode=$(stat -L -c %a -- "$env_file")
if ((8#$mode & 8#077)); then
	die 2 "env file $env_file has mode $mode: group or others can read the API key; chmod 600 it"
fi
set -a
# shellcheck source=/dev/null
. "$env_file"
set +a

manifest=${PROVISIONER_MANIFEST:-/etc/provisioner/campaigns.csv}
out=${PROVISIONER_OUT:-/var/lib/provisioner/out}
state=${PROVISIONER_STATE:-/var/lib/provisioner/state.sqlite3}
config=${PROVISIONER_CONFIG:-}
metrics=${PROVISIONER_METRICS_FILE:-}
log_file=${PROVISIONER_LOG-/var/log/provisioner/provisioner.log}
lock=${PROVISIONER_LOCK-/run/lock/provisioner.lock}
run_as=${PROVISIONER_USER-provisioner}
read -r -a bin <<<"${PROVISIONER_BIN:-provisioner}"

if [[ -n $log_file ]]; then
	mkdir -p -- "$(dirname -- "$log_file")" || die 2 "cannot create the folder of log file $log_file"
fi

# The job lock. fd 9 stays open (and locked) until this script and the provisioner,
# which inherits it, have both exited.
if [[ -n $lock ]]; then
	{ exec 9>>"$lock"; } 2>/dev/null || die 2 "cannot open lock file $lock; fix its folder or set PROVISIONER_LOCK"
	if ! flock -n 9; then
		log_event info job_lock_busy "another run-provisioner holds $lock; exit 75, nothing to do"
		exit 75
	fi
fi

cmd=("${bin[@]}" run "$manifest" --out "$out" --state "$state" --log-format json)
if [[ -n $config ]]; then
	cmd+=(--config "$config")
fi
if [[ -n $metrics ]]; then
	cmd+=(--metrics-file "$metrics")
fi
cmd+=("$@")

if [[ -n $run_as && $EUID -eq 0 ]]; then
	uid=$(id -u -- "$run_as" 2>/dev/null) || die 2 "user $run_as does not exist; create it or set PROVISIONER_USER"
	gid=$(id -g -- "$run_as")
	cmd=(setpriv --reuid="$uid" --regid="$gid" --init-groups -- "${cmd[@]}")
fi

# Signals are passed on to the run; one that arrives before it has started is kept.
child=
pending=
# shellcheck disable=SC2317  # called by the traps below, which shellcheck cannot follow
forward() { # signal
	if [[ -z $child ]]; then
		pending=$1
		return
	fi
	kill -s "$1" "$child" 2>/dev/null || true
	log_event warning signal_forwarded "passed SIG$1 on to the run (pid $child): it finishes the requests in flight, writes its outputs and exits"
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward TERM' HUP

# Start the run in its own process group (set -m), so that a signal sent to this
# script's group reaches the provisioner once, through the trap, and not twice (a second
# SIGTERM or SIGINT tells it to stop reading the manifest at once).
set -m
if [[ -n $log_file ]]; then
	"${cmd[@]}" 2>>"$log_file" &
else
	"${cmd[@]}" &
fi
child=$!
set +m
if [[ -n $pending ]]; then
	forward "$pending"
fi
rc=0
wait "$child" || rc=$?
# A trapped signal ends `wait` early (with 128+signal): wait for the run itself.
while kill -0 "$child" 2>/dev/null; do
	rc=0
	wait "$child" || rc=$?
done
trap - TERM INT HUP

what=
case $rc in
0 | 3 | 75 | 130 | 143) ;; # done, deferred to the next window, another run, interrupted
1) what="some rows failed: read $out/failures.jsonl (its message field says what to do per row)" ;;
2) what="usage, config, manifest, output or state store error, nothing was sent: fix what the log's last error names" ;;
4) what="a workspace cannot be used as configured (key refused, base URL redirected or unreachable, or TLS certificate not verified), the rest is deferred: fix what the summary's 'stopped' line names (the key or its permission in $env_file, base_url, the network, or ca_file)" ;;
*) what="unexpected exit code (killed? out of memory? command not found?); the next run resumes safely" ;;
esac
if [[ -n $what ]]; then
	printf 'run-provisioner: provisioner exited %d: %s. Summary: %s/summary.json; log: %s\n' \
		"$rc" "$what" "$out" "${log_file:-stderr above}" >&2
fi
exit "$rc"
