#!/usr/bin/env bash
# Run legseg on a SLURM cluster with Apptainer/Singularity: one array task per participant
# (or per --per-task participants), then the group level as a dependent job. See docs/cluster.md.
#
#   integrations/slurm/legseg_slurm.sh submit BIDS_DIR OUTPUT_DIR [--sif IMAGE] [options] [-- LEGSEG_OPTIONS...]
#
# submit options:
#   --sif IMAGE              Apptainer/Singularity image of legseg: a .sif file (best: pull it
#                            once) or a docker:// reference. Default: $LEGSEG_CONTAINER, else
#                            the released image docker://ghcr.io/legseg/legseg:<version>
#                            (<version>-gpu with --nv), <version> from this checkout
#   --nv                     give the container the host's NVIDIA GPUs (apptainer --nv);
#                            also request a GPU, e.g. --gres gpu:1, and pass -- --device gpu
#   --participant-label L..  participants to process, with or without sub- (default: every
#                            participants.tsv row that has a sub-<label> folder, else every
#                            sub-* folder)
#   --session-label L..      sessions to process, passed to every task (default: a task
#                            processes all sessions of its participant)
#   --per-task N             participants per array task (default 1): one legseg process
#                            with N --participant-label values, so its start-up (TensorFlow,
#                            networks, BIDS index) is paid once per N; the array has
#                            ceil(participants / N) tasks. Scale --time with N.
#   --cpus N                 CPUs per task; legseg gets --nprocs N (default 4)
#   --mem SIZE               memory per task, SLURM syntax (default 16G); legseg gets
#                            --mem-gb of half of it unless --mem-gb is given
#   --mem-gb G               legseg's memory budget for network patches, in GB
#   --time T                 time limit per task (default 02:00:00)
#   --partition P, --account A, --qos Q, --gres G    passed to sbatch
#   --max-parallel M         run at most M array tasks at once (--array=0-N%M)
#   --work-root DIR          scratch root on the compute node; each task uses and removes
#                            DIR/legseg-<job>-<index> (default: $TMPDIR, else /tmp, on the node)
#   --bind SRC[:DST[:OPTS]]  extra container bind, repeatable (e.g. for --models or a filter file)
#   --log-dir DIR            SLURM log files (default: OUTPUT_DIR/logs/slurm)
#   --runtime CMD            apptainer or singularity (default: whichever the node has)
#   --group-after ok|any     run the group level after all tasks succeeded (ok, default) or
#                            after all ended whatever their exit status (any)
#   --group-time T, --group-mem SIZE   group-level job limits (default 00:30:00, 4G)
#   --no-group               do not submit the group level
#   --dry-run                print the sbatch commands and each task's container command;
#                            submit nothing, create nothing
# Everything after "--" is passed to legseg at both levels (e.g. -- --region legs-hip).
#
# The array task and group bodies (run by sbatch; also usable by hand with --dry-run):
#   integrations/slurm/legseg_slurm.sh task  --bids B --out O --sif S --cpus N --mem-gb G [--nv] ...
#                                 [--per-task K] --label L1 --label L2 ... [-- LEGSEG_OPTIONS...]
#   (task i processes the labels number i*K .. i*K+K-1, counting from 0; K defaults to 1)
#   integrations/slurm/legseg_slurm.sh group --bids B --out O --sif S [--nv] ... [-- LEGSEG_OPTIONS...]
#
# Exit codes: 64 usage error, 66 BIDS_DIR missing, 69 sbatch or the container runtime missing;
# a task or group job exits with legseg's own code.
set -euo pipefail

readonly PROG=legseg_slurm.sh
readonly LABEL_RE='^[A-Za-z0-9]+$'
#: The released images (.github/workflows/release.yml): <version> for CPU, <version>-gpu.
readonly IMAGE_REPOSITORY=ghcr.io/legseg/legseg

die() {  # die CODE MESSAGE
  echo "$PROG: error: $2" >&2
  exit "$1"
}

warn() {
  echo "$PROG: warning: $*" >&2
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

quote() {  # print a command line, shell-quoted, on one line
  local out
  printf -v out '%q ' "$@"
  echo "${out% }"
}

absolute() {  # absolute path without resolving links; the path need not exist
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/${1#./}" ;;
  esac
}

check_bind_path() {  # apptainer --bind splits on ':' and ','
  case "$1" in
    *:* | *,*) die 64 "$2 '$1' contains ':' or ',', which apptainer --bind cannot take; use another path or a symbolic link" ;;
  esac
}

check_label() {  # check_label KIND PREFIX VALUE WHERE -> prints the label without its prefix
  local label=${3#"$2"}
  [[ $label =~ $LABEL_RE ]] || die 64 "invalid $1 label '$3'$4: labels must match [A-Za-z0-9]+ (after an optional '$2')"
  printf '%s\n' "$label"
}

check_legseg_options() {  # options the script sets itself must not come in LEGSEG_OPTIONS
  local arg
  for arg in "$@"; do
    case "$arg" in
      --participant_label | --participant-label | --participant_label=* | --participant-label=*)
        die 64 "give participants with the script's --participant-label, not after '--'" ;;
      --session_label | --session-label | --session_label=* | --session-label=*)
        die 64 "give sessions with the script's --session-label, not after '--'" ;;
      --nprocs | --nthreads | --n_cpus | --nprocs=* | --nthreads=* | --n_cpus=*)
        die 64 "$arg is set from --cpus; do not pass it after '--'" ;;
      --mem-gb | --mem_gb | --mem-gb=* | --mem_gb=* | --mem | --mem=* | --mem-mb | --mem_mb | \
      --mem-mb=* | --mem_mb=*)
        die 64 "use the script's --mem-gb instead of passing $arg after '--'" ;;
      -w | --work-dir | --work-dir=*)
        die 64 "the work folder comes from --work-root; do not pass $arg after '--'" ;;
      --nv | --sif | --bind)
        die 64 "$arg is an option of this script: put it before '--'" ;;
    esac
  done
}

half_mem_gb() {  # SLURM memory size (default unit M) -> half of it in GB, e.g. 16G -> 8
  local size=$1
  [[ $size =~ ^([0-9]+)([KkMmGgTt]?)[Bb]?$ ]] || die 64 "--mem '$size' is not a SLURM memory size (e.g. 16G, 16000M)"
  awk -v n="${BASH_REMATCH[1]}" -v unit="${BASH_REMATCH[2]:-M}" 'BEGIN {
    scale["K"] = 1 / 1048576; scale["M"] = 1 / 1024; scale["G"] = 1; scale["T"] = 1024
    value = sprintf("%.2f", n * scale[toupper(unit)] / 2)
    sub(/\.?0+$/, "", value); print value }'
}

# ---------------------------------------------------------------------------------------------
# Participants

participants_from_dataset() {  # BIDS_DIR -> one label a line
  local bids=$1 tsv="$1/participants.tsv" header line column=-1 i value label
  local -a fields
  if [ -f "$tsv" ]; then
    IFS= read -r header <"$tsv" || true
    IFS=$'\t' read -r -a fields <<<"${header%$'\r'}"
    for i in "${!fields[@]}"; do
      [ "${fields[$i]}" = participant_id ] && column=$i
    done
    [ "$column" -ge 0 ] || die 64 "$tsv has no participant_id column"
    local number=1 dir
    local -A listed=()
    while IFS= read -r line || [ -n "$line" ]; do
      number=$((number + 1))
      line=${line%$'\r'}
      [ -n "$line" ] || continue
      IFS=$'\t' read -r -a fields <<<"$line"
      value=${fields[$column]:-}
      label=$(check_label participant sub- "$value" " in $tsv line $number") || exit $?
      listed[$label]=1
      if [ -d "$bids/sub-$label" ]; then
        printf '%s\n' "$label"
      else
        warn "participants.tsv lists sub-$label but $bids/sub-$label does not exist; skipped"
      fi
    done < <(tail -n +2 "$tsv")
    for dir in "$bids"/sub-*/; do
      [ -d "$dir" ] || continue
      value=$(basename "$dir")
      [ -n "${listed[${value#sub-}]:-}" ] ||
        warn "$value has a folder but no participants.tsv row; not submitted (name it with --participant-label)"
    done
  else
    local dir
    for dir in "$bids"/sub-*/; do
      [ -d "$dir" ] || continue
      value=$(basename "$dir")
      check_label participant sub- "$value" " (folder $dir)" || exit $?
    done
  fi
}

# ---------------------------------------------------------------------------------------------
# Container commands (shared by task and group)

default_image() {  # default_image NV -> the released image of this checkout's version
  local version_file version
  version_file="$(cd "$(dirname "$0")" && pwd)/../../version"
  version=$(tr -d '[:space:]' <"$version_file" 2>/dev/null || true)
  printf 'docker://%s:%s%s\n' "$IMAGE_REPOSITORY" "${version:-latest}" "$([ "$1" = 0 ] || echo -gpu)"
}

# globals set by parse_body_options
bids="" out="" sif="" cpus="" mem_gb="" work_root="" runtime="" nv=0 dry_run=0 per_task=1
declare -a binds=() labels=() sessions=() legseg_options=()

parse_body_options() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --bids) bids=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      --sif) sif=$2; shift 2 ;;
      --cpus) cpus=$2; shift 2 ;;
      --mem-gb) mem_gb=$2; shift 2 ;;
      --work-root) work_root=$2; shift 2 ;;
      --runtime) runtime=$2; shift 2 ;;
      --bind) binds+=("$2"); shift 2 ;;
      --label) labels+=("$2"); shift 2 ;;
      --per-task) per_task=$2; shift 2 ;;
      --session-label) sessions+=("$2"); shift 2 ;;
      --nv) nv=1; shift ;;
      --dry-run) dry_run=1; shift ;;
      --) shift; legseg_options=("$@"); break ;;
      *) die 64 "unknown option '$1'" ;;
    esac
  done
  [ -n "$bids" ] && [ -n "$out" ] && [ -n "$sif" ] || die 64 "--bids, --out and --sif are required"
  [[ $per_task =~ ^[1-9][0-9]*$ ]] || die 64 "--per-task must be a positive integer, got '$per_task'"
}

container_runtime() {
  if [ -n "$runtime" ]; then
    printf '%s\n' "$runtime"
  elif command -v apptainer >/dev/null 2>&1; then
    echo apptainer
  elif command -v singularity >/dev/null 2>&1; then
    echo singularity
  elif [ "$dry_run" = 1 ]; then
    echo apptainer
  else
    die 69 "neither apptainer nor singularity is on PATH on $(hostname)"
  fi
}

container_prefix() {  # the "apptainer run ..." words up to and including the image
  local rt bind
  rt=$(container_runtime) || exit $?
  prefix=("$rt" run --cleanenv --bind "$bids:/bids:ro" --bind "$out:/out")
  [ -z "${1:-}" ] || prefix+=(--bind "$1:/work")
  for bind in "${binds[@]}"; do
    prefix+=(--bind "$bind")
  done
  [ "$nv" = 0 ] || prefix+=(--nv)
  prefix+=("$sif")
}

run_or_print() {
  if [ "$dry_run" = 1 ]; then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

task_main() {
  parse_body_options "$@"
  [ ${#labels[@]} -gt 0 ] || die 64 "task needs at least one --label"
  local index=${SLURM_ARRAY_TASK_ID:-}
  [[ $index =~ ^[0-9]+$ ]] || die 64 "SLURM_ARRAY_TASK_ID is '${index}'; the task body runs as a SLURM array task"
  local first=$((index * per_task))
  [ "$first" -lt ${#labels[@]} ] ||
    die 64 "SLURM_ARRAY_TASK_ID $index is out of range: ${#labels[@]} participant(s), $per_task per task"
  local -a mine=("${labels[@]:$first:$per_task}")
  local label
  for label in "${mine[@]}"; do
    check_label participant sub- "$label" "" >/dev/null
  done
  local job=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$$}}
  local work="${work_root:-${TMPDIR:-/tmp}}/legseg-$job-$index"
  container_prefix "$work"
  local -a command=("${prefix[@]}" /bids /out participant --participant-label "${mine[@]}")
  [ ${#sessions[@]} -eq 0 ] || command+=(--session-label "${sessions[@]}")
  [ -z "$cpus" ] || command+=(--nprocs "$cpus")
  [ -z "$mem_gb" ] || command+=(--mem-gb "$mem_gb")
  command+=(-w /work "${legseg_options[@]}")
  if [ "$dry_run" = 1 ]; then
    quote "${command[@]}"
    return 0
  fi
  echo "$PROG: array task $index: ${mine[*]/#/sub-} on $(hostname), work folder $work" >&2
  mkdir -p "$work"
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf '$work'" EXIT
  local code=0
  run_or_print "${command[@]}" || code=$?
  echo "$PROG: ${mine[*]/#/sub-} finished with exit code $code" >&2
  exit "$code"
}

group_main() {
  parse_body_options "$@"
  container_prefix ""
  run_or_print "${prefix[@]}" /bids /out group "${legseg_options[@]}"
}

# ---------------------------------------------------------------------------------------------
# Submission

submit_main() {
  local bids_arg="" out_arg="" sif_arg="" cpus_opt=4 mem=16G mem_gb_opt="" time=02:00:00
  local partition="" account="" qos="" gres="" max_parallel="" work_root_opt="" log_dir=""
  local runtime_opt="" group_after=ok group_time=00:30:00 group_mem=4G no_group=0 nv_opt=0 per_task_opt=1
  local -a positional=() labels_opt=() sessions_opt=() binds_opt=() extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --sif) sif_arg=${2:?--sif needs a value}; shift 2 ;;
      --nv) nv_opt=1; shift ;;
      --participant-label | --participant_label)
        shift
        [ $# -gt 0 ] && [[ $1 != -* ]] || die 64 "--participant-label needs at least one label"
        while [ $# -gt 0 ] && [[ $1 != -* ]]; do labels_opt+=("$1"); shift; done ;;
      --session-label | --session_label)
        shift
        [ $# -gt 0 ] && [[ $1 != -* ]] || die 64 "--session-label needs at least one label"
        while [ $# -gt 0 ] && [[ $1 != -* ]]; do sessions_opt+=("$1"); shift; done ;;
      --cpus) cpus_opt=${2:?--cpus needs a value}; shift 2 ;;
      --per-task) per_task_opt=${2:?--per-task needs a value}; shift 2 ;;
      --mem) mem=${2:?--mem needs a value}; shift 2 ;;
      --mem-gb) mem_gb_opt=${2:?--mem-gb needs a value}; shift 2 ;;
      --time) time=${2:?--time needs a value}; shift 2 ;;
      --partition) partition=${2:?--partition needs a value}; shift 2 ;;
      --account) account=${2:?--account needs a value}; shift 2 ;;
      --qos) qos=${2:?--qos needs a value}; shift 2 ;;
      --gres) gres=${2:?--gres needs a value}; shift 2 ;;
      --max-parallel) max_parallel=${2:?--max-parallel needs a value}; shift 2 ;;
      --work-root) work_root_opt=${2:?--work-root needs a value}; shift 2 ;;
      --bind) binds_opt+=("${2:?--bind needs a value}"); shift 2 ;;
      --log-dir) log_dir=${2:?--log-dir needs a value}; shift 2 ;;
      --runtime) runtime_opt=${2:?--runtime needs a value}; shift 2 ;;
      --group-after) group_after=${2:?--group-after needs a value}; shift 2 ;;
      --group-time) group_time=${2:?--group-time needs a value}; shift 2 ;;
      --group-mem) group_mem=${2:?--group-mem needs a value}; shift 2 ;;
      --no-group) no_group=1; shift ;;
      --dry-run) dry_run=1; shift ;;
      --) shift; extra=("$@"); break ;;
      -*) die 64 "unknown option '$1' (legseg options go after '--')" ;;
      *) positional+=("$1"); shift ;;
    esac
  done
  [ ${#positional[@]} -eq 2 ] || die 64 "submit needs BIDS_DIR and OUTPUT_DIR (got ${#positional[@]} positional argument(s))"
  [ -n "$sif_arg" ] || sif_arg=${LEGSEG_CONTAINER:-$(default_image "$nv_opt")}
  [[ $cpus_opt =~ ^[1-9][0-9]*$ ]] || die 64 "--cpus must be a positive integer, got '$cpus_opt'"
  [[ $per_task_opt =~ ^[1-9][0-9]*$ ]] || die 64 "--per-task must be a positive integer, got '$per_task_opt'"
  [ -z "$max_parallel" ] || [[ $max_parallel =~ ^[1-9][0-9]*$ ]] || die 64 "--max-parallel must be a positive integer"
  case "$group_after" in ok | any) ;; *) die 64 "--group-after must be ok or any, got '$group_after'" ;; esac
  check_legseg_options "${extra[@]}"

  bids_arg=$(absolute "${positional[0]}")
  out_arg=$(absolute "${positional[1]}")
  [ -d "$bids_arg" ] || die 66 "BIDS_DIR $bids_arg does not exist or is not a folder"
  [ "${bids_arg%/}" != "${out_arg%/}" ] || die 64 "OUTPUT_DIR must differ from BIDS_DIR"
  check_bind_path "$bids_arg" BIDS_DIR
  check_bind_path "$out_arg" OUTPUT_DIR
  case "$sif_arg" in
    *://*) ;;
    *)
      sif_arg=$(absolute "$sif_arg")
      check_bind_path "$sif_arg" --sif
      if [ ! -f "$sif_arg" ]; then
        [ "$dry_run" = 1 ] || die 64 "--sif $sif_arg does not exist"
        warn "--sif $sif_arg does not exist (dry run: continuing)"
      fi ;;
  esac
  [ -z "$work_root_opt" ] || { work_root_opt=$(absolute "$work_root_opt"); check_bind_path "$work_root_opt" --work-root; }
  log_dir=$(absolute "${log_dir:-$out_arg/logs/slurm}")
  if [ -z "$mem_gb_opt" ]; then
    mem_gb_opt=$(half_mem_gb "$mem") || exit $?
  fi
  awk -v g="$mem_gb_opt" 'BEGIN { exit !(g + 0 > 0) }' || die 64 "--mem-gb must be positive, got '$mem_gb_opt'"

  local -a participants=() session_labels=()
  local value label source
  if [ ${#labels_opt[@]} -gt 0 ]; then
    source="--participant-label"
    for value in "${labels_opt[@]}"; do
      label=$(check_label participant sub- "$value" "") || exit $?
      [ -d "$bids_arg/sub-$label" ] || die 64 "participant sub-$label has no folder in $bids_arg"
      participants+=("$label")
    done
  else
    if [ -f "$bids_arg/participants.tsv" ]; then source="participants.tsv"; else source="sub-* folders"; fi
    local listing
    listing=$(participants_from_dataset "$bids_arg") || exit $?
    [ -z "$listing" ] || mapfile -t participants <<<"$listing"
  fi
  # drop repeats, keep the order
  local -A seen=()
  local -a unique=()
  for label in "${participants[@]}"; do
    [ -n "${seen[$label]:-}" ] || unique+=("$label")
    seen[$label]=1
  done
  participants=("${unique[@]}")
  [ ${#participants[@]} -gt 0 ] || die 64 "no participants found in $bids_arg ($source)"
  for value in "${sessions_opt[@]}"; do
    label=$(check_label session ses- "$value" "") || exit $?
    session_labels+=("$label")
  done

  local self n=${#participants[@]}
  self=$(absolute "$0")
  local -a common=(--bids "$bids_arg" --out "$out_arg" --sif "$sif_arg")
  [ -z "$runtime_opt" ] || common+=(--runtime "$runtime_opt")
  [ "$nv_opt" = 0 ] || common+=(--nv)
  for value in "${binds_opt[@]}"; do common+=(--bind "$value"); done

  local -a sbatch_common=(sbatch --parsable)
  [ -z "$partition" ] || sbatch_common+=(--partition "$partition")
  [ -z "$account" ] || sbatch_common+=(--account "$account")
  [ -z "$qos" ] || sbatch_common+=(--qos "$qos")

  local tasks=$(((n + per_task_opt - 1) / per_task_opt))
  local array="0-$((tasks - 1))"
  [ -z "$max_parallel" ] || array+="%$max_parallel"
  local -a task_args=("${common[@]}" --cpus "$cpus_opt" --mem-gb "$mem_gb_opt")
  [ "$per_task_opt" = 1 ] || task_args+=(--per-task "$per_task_opt")
  [ -z "$work_root_opt" ] || task_args+=(--work-root "$work_root_opt")
  for value in "${session_labels[@]}"; do task_args+=(--session-label "$value"); done
  for label in "${participants[@]}"; do task_args+=(--label "$label"); done
  local -a array_command=("${sbatch_common[@]}" --job-name legseg --array "$array"
    --cpus-per-task "$cpus_opt" --mem "$mem" --time "$time")
  [ -z "$gres" ] || array_command+=(--gres "$gres")
  array_command+=(--output "$log_dir/legseg-%A_%a.log" "$self" task "${task_args[@]}" -- "${extra[@]}")

  group_command() {  # group_command ARRAY_JOB_ID -> the sbatch words of the group job, in $group
    group=("${sbatch_common[@]}" --job-name legseg-group --dependency "after$group_after:$1")
    [ "$group_after" = any ] || group+=(--kill-on-invalid-dep yes)
    group+=(--cpus-per-task 1 --mem "$group_mem" --time "$group_time"
      --output "$log_dir/legseg-group-%j.log" "$self" group "${common[@]}" -- "${extra[@]}")
  }
  local -a group=()

  echo "$PROG: $n participant(s) from $source: ${participants[*]}" >&2
  [ "$per_task_opt" = 1 ] || echo "$PROG: $tasks array task(s) of up to $per_task_opt participant(s)" >&2
  case "$sif_arg" in
    *://*) [ "$tasks" -le 1 ] ||
      warn "every array task fetches and converts $sif_arg; pull it once instead:" \
        "apptainer pull legseg.sif $sif_arg, then --sif legseg.sif" ;;
  esac
  if [ "$dry_run" = 1 ]; then
    echo "# participant level: one array task per $([ "$per_task_opt" = 1 ] && echo participant || echo "$per_task_opt participants")"
    quote "${array_command[@]}"
    if [ "$no_group" = 0 ]; then
      echo "# group level, after the array job (ARRAY_JOB_ID = the job ID printed by the first sbatch)"
      group_command ARRAY_JOB_ID
      quote "${group[@]}"
    fi
    local index
    for ((index = 0; index < tasks; index++)); do
      local -a chunk=("${participants[@]:$((index * per_task_opt)):$per_task_opt}")
      echo "# array task $index: ${chunk[*]/#/sub-}"
      SLURM_ARRAY_TASK_ID=$index SLURM_ARRAY_JOB_ID=ARRAY_JOB_ID "$self" task "${task_args[@]}" --dry-run -- "${extra[@]}"
    done
    if [ "$no_group" = 0 ]; then
      echo "# group job"
      "$self" group "${common[@]}" --dry-run -- "${extra[@]}"
    fi
    return 0
  fi

  command -v sbatch >/dev/null 2>&1 || die 69 "sbatch not found: run this on a SLURM login node (or use --dry-run)"
  mkdir -p "$out_arg" "$log_dir"
  local reply job_id
  reply=$("${array_command[@]}") || die 1 "sbatch refused the array job"
  job_id=${reply%%;*}
  echo "$PROG: submitted array job $job_id ($n task(s)); logs in $log_dir" >&2
  if [ "$no_group" = 0 ]; then
    group_command "$job_id"
    reply=$("${group[@]}") || die 1 "sbatch refused the group job (the array job $job_id is submitted)"
    echo "$PROG: submitted group job ${reply%%;*} (after$group_after:$job_id)" >&2
  fi
  echo "$job_id"
}

case "${1:-}" in
  submit) shift; submit_main "$@" ;;
  task) shift; task_main "$@" ;;
  group) shift; group_main "$@" ;;
  -h | --help) usage ;;
  *) usage >&2; exit 64 ;;
esac
