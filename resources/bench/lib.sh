# resources/bench/lib.sh: shared by the benchmark scripts. Set EMBER_LOG_TAG, then
# source this file: it sources resources/guest/lib.sh (ember_log, ember_die,
# ember_need, ...), sets HERE (this directory) and ROOT (the repository) and
# changes to ROOT.
# shellcheck shell=bash

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=SCRIPTDIR/../guest/lib.sh
. "$HERE/../guest/lib.sh"
cd "$ROOT" || exit

# bench_usage LINES: prints lines LINES (a sed range such as 6,7) of the
# calling script's header as its usage and exits 2.
bench_usage() {
    sed -n "${1}p" "$0" | sed 's/^# *//' >&2
    exit 2
}

# bench_retry WHAT CMD...: runs CMD until it succeeds. Other people may be
# editing the tree, so a failing build is retried every minute for up to ~10
# minutes before giving up.
bench_retry() {
    local what=$1 deadline=$(($(date +%s) + 600))
    shift
    until "$@"; do
        if (($(date +%s) >= deadline)); then
            ember_die "$what still failing after 10 minutes"
        fi
        ember_log "$what failed; retrying in 60s"
        sleep 60
    done
}
