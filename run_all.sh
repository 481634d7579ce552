#!/usr/bin/env bash
# Regenerate a paper table.
#   ./run_all.sh [--table main|budgets|flops|latency|dop] [--profile tiny|paper]
#                [--models NAME[,NAME...]] [--executor local|slurm] [--dry-run]
#                [--slurm-partition P] [--gpus-per-job N] [--rows-per-job N] [--staged DIR] [-- SWEEP OPTIONS]
# main (default), budgets, dop: the sweep sweeps/<profile>/<table>.yaml (dop: dop-analyses.yaml) into
# results/<profile>/store (resumable), then paper_tables/<profile>/<table>.{md,tex,csv} and
# results/<profile>/figures/. flops: analytic. latency: the timing protocol.
# Options after `--` go to `python -m repro sweep` as they are (see python -m repro sweep --help).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
}

TABLE=main
PROFILE=tiny
PROFILE_SOURCE="default: the paper's weights and a GPU are not assumed on this machine"
MODELS=all
EXECUTOR=local
DRY_RUN=0
EXTRA=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --table) TABLE="${2:?--table needs a value}"; shift 2 ;;
        --profile) PROFILE="${2:?--profile needs a value}"; PROFILE_SOURCE="from --profile"; shift 2 ;;
        --models) MODELS="${2:?--models needs a value}"; shift 2 ;;
        --executor) EXECUTOR="${2:?--executor needs a value}"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --slurm-partition|--gpus-per-job|--cpus-per-job|--rows-per-job|--slurm-cluster|--staged|--store|--limit)
            EXTRA+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

case "$PROFILE" in tiny|paper) ;; *) echo "error: --profile must be tiny or paper, got '$PROFILE'" >&2; exit 2 ;; esac
case "$EXECUTOR" in local|slurm) ;; *) echo "error: --executor must be local or slurm, got '$EXECUTOR'" >&2; exit 2 ;; esac

echo "profile: $PROFILE ($PROFILE_SOURCE)"

if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
MODELS="${MODELS// /,}"

case "$TABLE" in
    flops)
        echo "table: flops (analytic; the same for every profile and executor)"
        CMD=("$PY" -m repro flops --table --model "$MODELS" --out paper_tables)
        ;;
    latency)
        echo "table: latency (spec sweeps/$PROFILE/latency.yaml; the timing protocol of repro/latency.py)"
        CMD=("$PY" -m repro latency --spec "sweeps/$PROFILE/latency.yaml")
        [[ "$MODELS" != all ]] && CMD+=(--model "$MODELS")
        ;;
    main|budgets|dop)
        SPEC="sweeps/$PROFILE/$TABLE.yaml"
        [[ "$TABLE" == dop ]] && SPEC="sweeps/$PROFILE/dop-analyses.yaml"
        echo "table: $TABLE (sweep $SPEC, executor $EXECUTOR)"
        CMD=("$PY" -m repro sweep "$SPEC" --models "$MODELS" --executor "$EXECUTOR")
        [[ "$DRY_RUN" == 1 ]] && CMD+=(--dry-run)
        CMD+=(${EXTRA[@]+"${EXTRA[@]}"})
        exec "${CMD[@]}"
        ;;
    *)
        echo "error: unknown table '$TABLE'; choose main, budgets, flops, latency or dop" >&2
        exit 2
        ;;
esac

if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: $(printf '%q ' "${CMD[@]}")"
    exit 0
fi
status=0
"${CMD[@]}" || status=$?
echo "run_all.sh: table $TABLE ($PROFILE profile) finished in ${SECONDS} s, exit $status"
exit $status
