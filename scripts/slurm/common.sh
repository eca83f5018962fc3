# shellcheck shell=bash
# Shared by the d1 SLURM templates (sourced, never run): --dry-run, command printing, the pre-timeout
# signal hand-off to the training processes, and requeue on preemption.
#
# Preemption: `#SBATCH --signal=B:USR1@300` sends SIGUSR1 to this batch shell 300 s before the time limit.
# The launcher (torchrun under `accelerate launch`) would die on a raw SIGUSR1, so the trap below forwards it
# as a stop file ($D1_STOP_FILE) that every d1 process checks after each optimizer step
# (d1.cluster.PreemptionCallback, which also agrees on the step across all ranks). The Trainer then saves a
# normal checkpoint-N, the processes exit with status 75, and the job requeues itself; the next run starts
# with --resume_from_checkpoint auto from the newest complete checkpoint.

DRY_RUN=${DRY_RUN:-0}
for d1_arg in "$@"; do
    case $d1_arg in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            echo "usage: [VAR=value ...] sbatch|bash ${0##*/} [--dry-run]   (settings: the variables at its top)"
            exit 0
            ;;
        *)
            echo "${0##*/}: unknown option $d1_arg (only --dry-run)" >&2
            exit 2
            ;;
    esac
done

# Without SLURM (a laptop, or checking a template by hand): one node, this host, a local job id.
SLURM_JOB_ID=${SLURM_JOB_ID:-local}
SLURM_NNODES=${SLURM_NNODES:-1}
SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST:-localhost}
D1_PREEMPTED=0

d1_quote() {
    # One word as a shell would need it typed: bare when safe, else in single quotes.
    if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

d1_show() {
    # Print one command, quoted so that it can be pasted into a shell.
    local word line=""
    for word in "$@"; do
        line+="$(d1_quote "$word") "
    done
    echo "${line% }"
}

d1_do() {
    # Run a command, or print it under --dry-run.
    if [[ $DRY_RUN == 1 ]]; then
        d1_show "$@"
    else
        "$@"
    fi
}

d1_export() {
    # export NAME=VALUE, printed under --dry-run so that the printed commands see it too.
    export "$1=$2"
    if [[ $DRY_RUN == 1 ]]; then
        echo "export $1=$(d1_quote "$2")"
    fi
}

d1_on_signal() {
    D1_PREEMPTED=1
    echo "$(date '+%F %T') ${0##*/}: got SIG$1; asking the training processes to save a checkpoint and stop" >&2
    touch "$D1_STOP_FILE"
}

d1_launch() {
    # Run the training command in the background with the signal hand-off; requeue the job when it was
    # stopped by the pre-timeout signal (or scancel), return the command's status otherwise.
    if [[ $DRY_RUN == 1 ]]; then
        d1_show "$@"
        return 0
    fi
    rm -f "$D1_STOP_FILE"
    trap 'd1_on_signal USR1' USR1
    trap 'd1_on_signal TERM' TERM
    "$@" &
    local child=$! status=0
    wait "$child" || status=$?
    while kill -0 "$child" 2>/dev/null; do # a trapped signal interrupts `wait`: wait for the real exit
        status=0
        wait "$child" || status=$?
    done
    trap - USR1 TERM
    rm -f "$D1_STOP_FILE"
    if [[ $D1_PREEMPTED == 1 ]]; then
        echo "${0##*/}: stopped early (status $status); checkpoint saved under the output folder" >&2
        if [[ $SLURM_JOB_ID != local ]]; then
            scontrol requeue "$SLURM_JOB_ID"
        fi
        exit 75
    fi
    return "$status"
}
