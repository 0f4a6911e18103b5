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
# 4. Reports every exit code but the quiet ones (PROVISIONER_QUIET_CODES: 0, 75, 130 and
#    143, i.e. done, another run is working, interrupted): one line saying what it means
#    and what to do, then the run's own closing lines from the log (counts, the most
#    common errors, the run id, when the quota window reopens and what to run next; or
#    the error that stopped it; or, for a crash, the log's last lines). On stderr, which
#    cron mails to MAILTO; or, with PROVISIONER_MAILTO set, by `sendmail -t` with a
#    subject naming the host and the exit code (stderr again if sendmail fails).
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
#   PROVISIONER_QUIET_CODES   exit codes that report nothing  0 75 130 143
#                             (add 3 to hear nothing about deferred nights either)
#   PROVISIONER_MAILTO        send the report by sendmail     none: on stderr, for cron
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
	report "$1" "run-provisioner: $2" "nothing ran"
	exit "$1"
}

# The report for a person: by sendmail when PROVISIONER_MAILTO is set, else (or if that
# fails) on stderr, where cron picks it up for MAILTO.
report() { # exit_code body subject_reason
	local host
	if [[ -n ${mailto:-} ]]; then
		host=$(uname -n)
		if {
			printf 'To: %s\nSubject: provisioner on %s exited %d: %s\n' "$mailto" "$host" "$1" "$3"
			printf 'Auto-Submitted: auto-generated\nMIME-Version: 1.0\n'
			printf 'Content-Type: text/plain; charset=UTF-8\n\n%s\n' "$2"
		} | sendmail -t -i 2>/dev/null; then
			return 0
		fi
		printf 'run-provisioner: sendmail failed; the report for %s follows\n' "$mailto" >&2
	fi
	printf '%s\n' "$2" >&2
}

# The values of a JSON string array (the run_summary event's "lines"), one a line.
# orjson, which writes the log, escapes only ", \ and control characters; printf %b
# undoes \\, \n, \t, \uXXXX once \" is a plain quote.
json_string_array() { # key json_line
	local start="\"$1\":[" rest s
	rest=${2#*"$start"}
	local item='^"((\\.|[^"\\])*)"(,|\])'
	while [[ $rest =~ $item ]]; do
		s=${BASH_REMATCH[1]}
		printf '%b\n' "${s//\\\"/\"}"
		[[ ${BASH_REMATCH[3]} == "]" ]] && break
		rest=${rest:${#BASH_REMATCH[0]}}
	done
}
json_string() { # key json_line
	local value="\"$1\":\"((\\\\.|[^\"\\\\])*)\""
	if [[ $2 =~ $value ]]; then
		local s=${BASH_REMATCH[1]}
		printf '%b\n' "${s//\\\"/\"}"
	fi
}

mailto=${PROVISIONER_MAILTO:-} # again after the env file, which may set it
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
quiet_codes=" ${PROVISIONER_QUIET_CODES-0 75 130 143} "
mailto=${PROVISIONER_MAILTO:-}
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

# Where this run's lines start in the log: the report quotes its closing lines.
log_start=0
if [[ -n $log_file && -f $log_file ]]; then
	log_start=$(stat -c %s -- "$log_file")
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

# The run's own closing lines, from its part of the log: the run_summary event's lines
# and the message of an error that stopped it; failing both (a crash, a kill), the
# log's last lines as they are. Nothing when the log is stderr: it is in the mail above.
closing_lines() {
	[[ -n $log_file && -f $log_file ]] || return 0
	local line found=
	while IFS= read -r line; do
		found=1
		case $line in
		*'"event":"run_summary"'*) json_string_array lines "$line" ;;
		*) json_string message "$line" ;;
		esac
	done < <(tail -c +"$((log_start + 1))" -- "$log_file" |
		grep -F -e '"event":"run_summary"' -e '"event":"error"')
	if [[ -z $found ]]; then
		tail -c +"$((log_start + 1))" -- "$log_file" | tail -n 10
	fi
}

if [[ $quiet_codes == *" $rc "* ]]; then
	exit "$rc"
fi
case $rc in
0) what="every row provisioned"; why="done" ;;
1) what="some rows failed: read $out/failures.jsonl (its message field says what to do per row)"; why="rows failed" ;;
2) what="usage, config, manifest, output or state store error, nothing was sent unless the error below says otherwise (a disk that filled mid-run): fix what it names"; why="usage, configuration or storage error" ;;
3) what="rows deferred (quota, rate limit, or an outage after Braze had answered), none failed: nothing to do, the next night carries on (the lines below say when the window reopens)"; why="rows deferred to the next night" ;;
4) what="a workspace cannot be used as configured (key refused, base URL redirected or unreachable, or TLS certificate not verified), the rest is deferred: fix what the 'stopped' line below names (the key or its permission in $env_file, base_url, the network, or ca_file)"; why="configuration error, a workspace stopped" ;;
75) what="another run holds the state store or the job lock: nothing to do"; why="another run is working" ;;
130 | 143) what="interrupted by a signal after the outputs were written: the next run finishes the work"; why="interrupted" ;;
*) what="unexpected exit code (killed? out of memory? command not found?); the next run resumes safely"; why="unexpected exit" ;;
esac
report "$rc" "$(
	printf 'run-provisioner: provisioner exited %d: %s. Summary: %s/summary.json; log: %s\n' \
		"$rc" "$what" "$out" "${log_file:-stderr above}"
	closing_lines
)" "$why"
exit "$rc"
