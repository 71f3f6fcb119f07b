#!/usr/bin/env bash
# awo-decide.sh: the one script behind the GitHub, GitLab and Jenkins templates. It runs `awo decide --json`
# on the change the CI job builds, writes the decision, exposes it to the CI system and acts on the gate.
#
# Inputs (environment; all optional):
#   AWO_CI_REPO           the git checkout to decide on (default: .)
#   AWO_CI_SHA            one commit; or AWO_CI_BASE and AWO_CI_HEAD, a range. When none is set the change
#                         comes from the CI system's own variables (GitHub, GitLab, Jenkins; else HEAD)
#   AWO_CI_ENVIRONMENT    target environment (default: production)
#   AWO_CI_SERVICES       services shipped, space-separated (default: awo reads them from the files)
#   AWO_CI_MODE           enforce (default): a block fails the job, and a senior review unless
#                         AWO_CI_ALLOW_REVIEW=true; advisory: the gate is reported, the job never fails on it
#   AWO_CI_ALLOW_REVIEW   true: in enforce mode a senior_review passes (default: false)
#   AWO_CI_INSTALL_FROM   what `pip install` installs awo from (a path, git+https://..., awo==X);
#                         empty: use the `awo` already on PATH
#   AWO_CI_DECISION_FILE  where the decision JSON is written (default: awo-decision.json)
#   AWO_CI_DOTENV_FILE    a GitLab dotenv report to write (AWO_GATE, AWO_PROBABILITY, AWO_DECISION_ID)
#   AWO_CI_PYTHON         the Python that installs awo and reads the JSON (default: python3)
#   awo's own settings (AWO_POLICY, AWO_DATA_DIR, AWO_RISK_API_URL, ...) pass through unchanged.
# Exit status: 0 proceed (and every gate in advisory mode); 3 senior review and 4 block (enforce mode);
# anything else: awo itself failed, and the change was not decided (never read as proceed, in either mode).
set -euo pipefail

say() { printf 'awo: %s\n' "$*"; }
die() {
    printf 'awo: error: %s\n' "$1" >&2
    exit "${2:-1}"
}

repo=${AWO_CI_REPO:-.}
mode=${AWO_CI_MODE:-enforce}
allow_review=${AWO_CI_ALLOW_REVIEW:-false}
environment=${AWO_CI_ENVIRONMENT:-production}
decision_file=${AWO_CI_DECISION_FILE:-awo-decision.json}
python=${AWO_CI_PYTHON:-python3}

case "$mode" in enforce | advisory) ;; *) die "AWO_CI_MODE=$mode: expected enforce or advisory" 2 ;; esac
case "$allow_review" in true | false) ;; *) die "AWO_CI_ALLOW_REVIEW=$allow_review: expected true or false" 2 ;; esac

if [ -n "${AWO_CI_INSTALL_FROM:-}" ]; then
    say "installing awo from $AWO_CI_INSTALL_FROM"
    "$python" -m pip install --quiet "$AWO_CI_INSTALL_FROM" || die "pip install $AWO_CI_INSTALL_FROM failed"
fi
command -v awo >/dev/null || die "awo is not on PATH: set AWO_CI_INSTALL_FROM (a pip requirement) or install it first"

zero_sha=0000000000000000000000000000000000000000

# The change (into `args`): explicit inputs first, then what the CI system says this job builds.
args=()
change_args() {
    if [ -n "${AWO_CI_SHA:-}" ]; then
        args=(--sha "$AWO_CI_SHA")
    elif [ -n "${AWO_CI_BASE:-}" ] || [ -n "${AWO_CI_HEAD:-}" ]; then
        [ -n "${AWO_CI_BASE:-}" ] && [ -n "${AWO_CI_HEAD:-}" ] || die "AWO_CI_BASE and AWO_CI_HEAD go together" 2
        args=(--base "$AWO_CI_BASE" --head "$AWO_CI_HEAD")
    elif [ "${GITHUB_ACTIONS:-}" = true ]; then
        # pull_request events: the PR's base and head commits from the event payload; push: before..sha.
        local pair
        pair=$("$python" - "${GITHUB_EVENT_PATH:-}" <<'PY'
import json, sys
try:
    event = json.load(open(sys.argv[1])) if sys.argv[1] else {}
except OSError:
    event = {}
pr = event.get("pull_request") or {}
base, head = (pr.get("base") or {}).get("sha"), (pr.get("head") or {}).get("sha")
if not (base and head):
    base, head = event.get("before"), event.get("after")
print(f"{base or ''} {head or ''}")
PY
        )
        local base=${pair% *} head=${pair#* }
        if [ -n "$base" ] && [ "$base" != "$zero_sha" ] && [ -n "$head" ]; then
            args=(--base "$base" --head "$head")
        else
            args=(--sha "${GITHUB_SHA:?GITHUB_SHA is not set}")
        fi
    elif [ "${GITLAB_CI:-}" = true ]; then
        if [ -n "${CI_MERGE_REQUEST_DIFF_BASE_SHA:-}" ]; then
            args=(--base "$CI_MERGE_REQUEST_DIFF_BASE_SHA" --head "$CI_COMMIT_SHA")
        elif [ -n "${CI_COMMIT_BEFORE_SHA:-}" ] && [ "$CI_COMMIT_BEFORE_SHA" != "$zero_sha" ]; then
            args=(--base "$CI_COMMIT_BEFORE_SHA" --head "$CI_COMMIT_SHA")
        else
            args=(--sha "${CI_COMMIT_SHA:?CI_COMMIT_SHA is not set}")
        fi
    elif [ -n "${JENKINS_URL:-}" ]; then
        if [ -n "${CHANGE_TARGET:-}" ]; then # a multibranch pull-request build
            args=(--base "origin/$CHANGE_TARGET" --head "${GIT_COMMIT:-HEAD}")
        elif [ -n "${GIT_PREVIOUS_SUCCESSFUL_COMMIT:-}" ]; then
            args=(--base "$GIT_PREVIOUS_SUCCESSFUL_COMMIT" --head "${GIT_COMMIT:-HEAD}")
        else
            args=(--sha "${GIT_COMMIT:-HEAD}")
        fi
    else
        args=(--sha HEAD)
    fi
}

change_args
for service in ${AWO_CI_SERVICES:-}; do args+=(--service "$service"); done

say "awo decide --repo $repo ${args[*]} --environment $environment --json"
set +e
awo decide --repo "$repo" "${args[@]}" --environment "$environment" --json >"$decision_file"
status=$?
set -e

write_outputs() { # gate probability decision_id
    if [ -n "${GITHUB_OUTPUT:-}" ]; then
        printf 'gate=%s\nprobability=%s\ndecision-id=%s\nexit-code=%s\ndecision-file=%s\n' \
            "$1" "$2" "$3" "$status" "$decision_file" >>"$GITHUB_OUTPUT"
    fi
    if [ -n "${AWO_CI_DOTENV_FILE:-}" ]; then
        printf 'AWO_GATE=%s\nAWO_PROBABILITY=%s\nAWO_DECISION_ID=%s\nAWO_EXIT_CODE=%s\n' \
            "$1" "$2" "$3" "$status" >"$AWO_CI_DOTENV_FILE"
    fi
}

if [ "$status" -ne 0 ] && [ "$status" -ne 3 ] && [ "$status" -ne 4 ]; then
    write_outputs error "" ""
    die "awo decide failed (exit $status; its error is above): the change was NOT decided" "$status"
fi

# gate, probability, decision id and exit code from the JSON; the Markdown summary beside it. The JSON's
# text (reasons quote file names and commit data) is only ever printed, never run.
summary_md=$(mktemp)
trap 'rm -f "$summary_md"' EXIT
if ! fields=$("$python" - "$decision_file" "$summary_md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
gate, prob, ident, code = d["gate"], d.get("probability"), d["decision_id"], d["exit_code"]
p = "" if prob is None else f"{prob:.4f}"
lines = [
    f"### awo: {gate.replace('_', ' ')}",
    "",
    f"{d.get('repo', '')} {', '.join(s[:12] for s in d.get('shas', [])[:5])} → "
    f"{', '.join(d.get('services', [])) or '(no service)'} in {d.get('environment', '')}; "
    + ("unscored" if prob is None else f"{d.get('band')} risk {p}"),
    "",
    *[f"- [{r['kind']}] {r['message']}" for r in d.get("reasons", [])],
    "",
    f"decision `{ident}` (policy {d.get('policy_version', '')})",
]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print(gate, p or "-", ident, code)
PY
); then
    write_outputs error "" ""
    die "awo decide exited $status but $decision_file is not a decision" 1
fi
read -r gate probability decision_id json_code <<<"$fields"
[ "$probability" = - ] && probability=""
[ "$json_code" = "$status" ] || die "awo decide exited $status but its decision says exit_code $json_code" 1

write_outputs "$gate" "$probability" "$decision_id"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then cat "$summary_md" >>"$GITHUB_STEP_SUMMARY"; fi

case "$status" in
    0) verdict=proceed ;;
    3) verdict="senior review" ;;
    4) verdict=block ;;
esac
say "$verdict (gate $gate, probability ${probability:-unscored}, decision $decision_id; $mode mode) -> $decision_file"

if [ "$mode" = advisory ]; then
    exit 0
elif [ "$status" -eq 3 ] && [ "$allow_review" = true ]; then
    say "senior review allowed (AWO_CI_ALLOW_REVIEW=true): not failing the job"
    exit 0
fi
exit "$status"
