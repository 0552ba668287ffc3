#!/usr/bin/env bash
# The GPU side of a run (runs THERE, on the device machine, from the repository root):
#   bash benchmarks/gpu/remote.sh STEP [STEP ...]
# Steps, run in order, stopping at the first that fails:
#   receive             take the pieces and wheels of this call's .gpu/send*/ folders; install the wheels;
#                       reassemble and SHA-256-check every data file whose pieces are all there
#   check               nvidia-smi, torch and CUDA, mitoseg's imports, which data files are verified
#   smoke               benchmarks/gpu/smoke.py: both models a few iterations on synthetic data (no data
#                       needed): seconds per iteration, per validation, per prediction ($OUT/smoke.json)
#   study MINUTES|full  mitoseg compare --preset full on CA1, MINUTES of training per model or ('full') the
#                       preset's 200 epochs (seed: $SEED, 0; $PLANES 3: the 2D model on three planes);
#                       stopped at the deadline, the same step in the
#                       next call on the warm machine resumes it (compare --resume)
#   contrast            experiments/contrast.py on the study's two models: the central 32 test slices under
#                       eight grey-level changes, own window and matched ($OUT/contrast-seedS.json, .md)
#   planes              experiments/planes.py --tta on the study's 2D model: the whole test volume predicted
#                       along XY and along XY, ZX and ZY (`mitoseg predict --planes 3`) ($OUT/planes-seedS.json, .md)
#   annotation ITER     experiments/annotation.py on CA1: the annotation curve (2D then 3D; 1..165 slices,
#                       $CHOICES slice choices, default 3; for each seed in $SEEDS, default 0) and suggested
#                       vs even slices, ITER iterations per run
#   bench               benchmarks/bench_backends.py and bench_predict.py on cuda (options: $BACKENDS_OPTIONS, $PREDICT_OPTIONS)
#   fullvolume RUN|-    benchmarks/bench_full_volume.py on cuda with --model RUN ('-': untrained 2D);
#                       arguments after it (e.g. --predict-slices 256) go to the script
# Files outside the repository live in $MITOSEG_GPU_DIR (default /tmp/mitoseg-gpu): they survive between
# calls only while the machine stays warm, so every step checks what is there. Logs and result bundles
# go into $OUT (at most 8 files come back: remote.log and one .tar.gz per result step).
# All steps of one invocation share a deadline of $GPU_LIMIT_S seconds (default 570), below the tool's
# 600 s: a step still running then is stopped and what it wrote so far is bundled.
set -euo pipefail
export PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}  # fewer progress-bar updates in the log

START=$(date +%s)
LIMIT=${GPU_LIMIT_S:-570}
BASE=${MITOSEG_GPU_DIR:-/tmp/mitoseg-gpu}
REPO=$(pwd)
[[ -f $REPO/benchmarks/gpu/remote.sh && -d $REPO/src/mitoseg ]] || { echo "run from the repository root" >&2; exit 2; }
OUT=${OUT:-$BASE/out}
PY=${PYTHON:-python3}
SEED=${SEED:-0}
mkdir -p "$OUT" "$BASE"/{parts,site,data,meta}
export PYTHONPATH=$BASE/site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}
export MITOSEG_SHARED_DATA=$BASE/data MITOSEG_DROSO=$BASE/data/drosophila-vnc-stack1
export MPLBACKEND=Agg
CLI='import sys; from mitoseg.cli import main; sys.exit(main(sys.argv[1:]))'

say() { printf '[remote %4ds] %s\n' $(($(date +%s) - START)) "$*"; }
left() { echo $((LIMIT - ($(date +%s) - START))); }

# bounded SECONDS CMD...: run CMD for at most SECONDS (0: no limit of its own) and never past the shared
# deadline (SIGTERM, then SIGKILL 10 s later); returns the command's status, 3 when it was stopped
bounded() {
    local t most=$1
    shift
    t=$(left)
    ((most > 0 && most < t)) && t=$most
    ((t > 30)) || { say "no time left for: $*"; return 3; }
    local rc=0
    timeout --kill-after=10 "$((t - 20))" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then  # status 3, not 124: the device tool reads 124 as its own timeout
        say "stopped after $((t - 20)) s (deadline $LIMIT s), status 3: $*"
        rc=3
    fi
    return "$rc"
}

# ------------------------------------------------------------------ receive

verified() { [[ -f $BASE/data/.verified/${1//\//__} ]]; }

manifest() {  # the manifest of this call's send folders, else the one kept from an earlier call
    local m
    m=$(ls -d .gpu/send*/manifest 2>/dev/null | head -n 1 || true)
    if [[ -n $m ]]; then cp "$m"/*.tsv "$BASE/meta/"; fi
    [[ -f $BASE/meta/files.tsv ]]
}

install_wheels() {
    local wheels=(.gpu/send*/wheels/*.whl)
    [[ -e ${wheels[0]} ]] || return 0
    local stamp=$BASE/site/.installed list
    list=$(for w in "${wheels[@]}"; do basename "$w"; done | sort -u)
    if [[ -f $stamp && $(cat "$stamp") == "$list" ]]; then
        say "wheels: already installed in $BASE/site"
        return 0
    fi
    local version
    version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ $version != 3.12 && -z ${FORCE_INSTALL:-} ]]; then
        say "wheels: NOT installed: $PY is Python $version, the wheels are for 3.12 (a local simulation?)"
        return 0
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$BASE/site" \
        "${wheels[@]}"
    echo "$list" >"$stamp"
    say "wheels: installed $(echo "$list" | wc -l) into $BASE/site"
}

step_receive() {
    local n=0 p dest bytes sum pieces unpack
    if ! manifest; then
        say "receive: no manifest: no .gpu/sendN folder carried in this call or an earlier one on this machine"
        return 1
    fi
    for p in .gpu/send*/parts/*; do
        [[ -f $p ]] || continue
        dest=$(awk -F'\t' -v p="$(basename "$p")" '$1 == p {print $2}' "$BASE/meta/pieces.tsv")
        if [[ -n $dest ]] && verified "$dest"; then continue; fi
        local target
        target=$BASE/parts/$(basename "$p")
        if [[ ! -f $target || $(stat -c %s "$target") != $(stat -c %s "$p") ]]; then
            cp "$p" "$target.tmp" && mv "$target.tmp" "$target"
            n=$((n + 1))
        fi
    done
    say "receive: $n new piece(s) from $(ls -d .gpu/send* 2>/dev/null | tr '\n' ' ')"
    install_wheels
    mkdir -p "$BASE/data/.verified"
    local missing=() ok=() bad=0
    while IFS=$'\t' read -r dest bytes sum pieces unpack; do
        [[ $dest == dest ]] && continue
        if verified "$dest"; then ok+=("$dest"); continue; fi
        local names=() have=1 name size
        while IFS=$'\t' read -r name size; do
            names+=("$BASE/parts/$name")
            [[ -f $BASE/parts/$name && $(stat -c %s "$BASE/parts/$name") == "$size" ]] || have=0
        done < <(awk -F'\t' -v d="$dest" '$2 == d {print $3 "\t" $1 "\t" $4}' "$BASE/meta/pieces.tsv" \
                 | sort -n | cut -f2,3)
        local got=$(( ${#names[@]} ))
        if ((!have || got != pieces)); then
            local there=0 f
            for f in "${names[@]}"; do [[ -f $f ]] && there=$((there + 1)); done
            local sends
            sends=$(awk -F'\t' -v d="$dest" '$2 == d {print $5}' "$BASE/meta/pieces.tsv" | sort -u | tr '\n' ' ')
            missing+=("$dest ($there/$pieces pieces; in: ${sends% })")
            continue
        fi
        local whole=$BASE/data/$dest
        mkdir -p "$(dirname "$whole")"
        cat "${names[@]}" >"$whole.tmp"
        if [[ $(sha256sum "$whole.tmp" | cut -d' ' -f1) != "$sum" ]]; then
            say "receive: SHA-256 MISMATCH for $dest: pieces removed, carry its send folders again"
            rm -f "$whole.tmp" "${names[@]}"
            bad=1
            missing+=("$dest (bad checksum)")
            continue
        fi
        if [[ $unpack == tar ]]; then
            tar -C "$(dirname "$whole")" -xf "$whole.tmp"
            rm -f "$whole.tmp"
        else
            mv "$whole.tmp" "$whole"
        fi
        echo "$sum" >"$BASE/data/.verified/${dest//\//__}"
        rm -f "${names[@]}"
        ok+=("$dest")
        say "receive: $dest reassembled, SHA-256 verified"
    done <"$BASE/meta/files.tsv"
    if [[ -f $BASE/site/.installed ]]; then
        say "STATUS wheels: installed in $BASE/site ($(wc -l <"$BASE/site/.installed") wheels)"
    else
        say "STATUS wheels: NOT installed (carry .gpu/send1 in this call)"
    fi
    say "STATUS present+verified: ${#ok[@]} file(s): ${ok[*]:-none}"
    if ((${#missing[@]})); then
        say "STATUS still missing: ${#missing[@]} file(s):"
        printf '         %s\n' "${missing[@]}"
    else
        say "STATUS all data files present and verified"
    fi
    return "$bad"
}

# ------------------------------------------------------------------ check

need_data() {  # need_data PREFIX WHAT: every manifest file under PREFIX verified
    local dest missing=0
    [[ -f $BASE/meta/files.tsv ]] || { say "$2: no data received yet (run receive first)"; return 1; }
    while IFS=$'\t' read -r dest _; do
        [[ $dest == "$1"* ]] || continue
        verified "$dest" || { say "$2: $dest is not there yet"; missing=1; }
    done <"$BASE/meta/files.tsv"
    return "$missing"
}

need_cuda() {
    [[ ${REQUIRE_CUDA:-1} == 0 ]] && return 0
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || { say "torch sees no CUDA GPU (REQUIRE_CUDA=0 to go on anyway)"; return 1; }
}

step_check() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi || true; else say "check: nvidia-smi not found"; fi
    "$PY" - <<'EOF'
import importlib.metadata as m
import platform

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
import cc3d, monai, numcodecs, zarr  # noqa: E401,F401
import mitoseg
from mitoseg import compare, predict, train  # noqa: F401  (the study's import path)

print("mitoseg", mitoseg.__file__)
for name in ("monai", "zarr", "numcodecs", "donfig", "google-crc32c", "connected-components-3d", "edt", "dask", "numpy",
             "scipy", "scikit-image", "tifffile", "matplotlib"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} NOT INSTALLED")
EOF
    local dest
    if [[ -f $BASE/meta/files.tsv ]]; then
        while IFS=$'\t' read -r dest _; do
            [[ $dest == dest ]] && continue
            if verified "$dest"; then say "check: data $dest verified"; else say "check: data $dest MISSING"; fi
        done <"$BASE/meta/files.tsv"
    else
        say "check: no data received yet"
    fi
    need_cuda
}

# ------------------------------------------------------------------ result bundles

gpu_record() {  # gpu_record FOLDER: what ran where
    { nvidia-smi 2>&1 || echo "nvidia-smi not available"; } >"$1/nvidia-smi.txt"
    "$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' >"$1/torch.txt" 2>&1 || true
}

scrub() {  # scrub FOLDER: this machine's paths in its text files become the names the README uses
    find "$1" -type f \( -name '*.md' -o -name '*.json' -o -name '*.log' -o -name '*.csv' -o -name '*.txt' \) \
        -exec sed -i -e "s#$BASE#\$MITOSEG_GPU_DIR#g" -e "s#$OUT#\$OUT#g" -e "s#$REPO/##g" -e "s#$REPO#.#g" {} +
}

bundle() {  # bundle NAME FOLDER: FOLDER as $OUT/NAME.tar.gz, split if over 15 MiB
    local name=$1 folder=$2
    scrub "$folder"
    tar -C "$(dirname "$folder")" -czf "$OUT/$name.tar.gz" "$(basename "$folder")"
    local size
    size=$(stat -c %s "$OUT/$name.tar.gz")
    if ((size > 15 * 1048576)); then
        split -b 15M -d "$OUT/$name.tar.gz" "$OUT/$name.tar.gz.part-"
        rm -f "$OUT/$name.tar.gz"
        say "bundle: $name.tar.gz was $((size / 1048576)) MiB: split into $OUT/$name.tar.gz.part-NN (cat them)"
    else
        say "bundle: $OUT/$name.tar.gz ($((size / 1024)) KiB)"
    fi
}

trace_start() {  # GPU utilisation and memory every 5 s into $1
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm \
            --format=csv -l 5 >"$1" 2>&1 &
        TRACE=$!
    else
        TRACE=
    fi
}
trace_stop() { if [[ -n ${TRACE:-} ]]; then kill "$TRACE" 2>/dev/null || true; wait "$TRACE" 2>/dev/null || true; fi; }

# ------------------------------------------------------------------ study

step_study() {  # step_study MINUTES|full: a compare on CA1; a second call on the warm machine goes on with it
    local minutes=$1
    need_data lucchi-derived/ study
    need_cuda
    local run=$BASE/ca1-gpu-seed$SEED
    local keep=$BASE/bundle-study-seed$SEED/ca1-gpu-seed$SEED
    local budget=(--minutes "$minutes") stamp
    [[ $minutes == full ]] && budget=()  # the GPU preset's own 200 epochs per model
    stamp=$(date +%H%M%S)
    # a finished study is replaced; an unfinished one ($run.partial) of the same settings is resumed
    # (compare --resume: its finished models kept, an interrupted training continued from its last
    # checkpoint, 30 s apart); one of other settings is dropped
    [[ -n ${PLANES:-} ]] && budget+=(--planes "$PLANES")  # 3: the 2D model trained and predicting on three planes
    local args="${budget[*]} --seed $SEED"
    if [[ -d $run.partial && $(cat "$run.args" 2>/dev/null) != "$args" ]]; then
        say "study: dropping the unfinished study of other settings ($(cat "$run.args" 2>/dev/null))"
        rm -rf "$run.partial"
    fi
    [[ -d $run.partial ]] || rm -rf "$(dirname "$keep")"  # a new study: a new bundle
    rm -rf "$run"
    echo "$args" >"$run.args"
    mkdir -p "$keep"
    gpu_record "$keep"
    trace_start "$keep/gpu-trace-$stamp.csv"
    say "study: compare --preset full ${budget[*]:---epochs 200} --seed $SEED --resume, $(left) s left"
    local rc=0 t0=$SECONDS
    bounded 0 "$PY" -c "$CLI" compare --preset full --dataset lucchi --data "$BASE/data/lucchi-derived" \
        "${budget[@]}" --seed "$SEED" --out "$run" --overwrite --resume || rc=$?
    trace_stop
    say "study: exit status $rc after $((SECONDS - t0)) s"
    local from=$run
    [[ -d $run ]] || { from=$run.partial; say "study: unfinished: bundling what $from holds ('study $minutes' again goes on)"; }
    if [[ -d $from ]]; then
        (cd "$from" && find . -maxdepth 2 -type f -not -path '*.zarr/*' \( -name '*.md' -o -name '*.json' \
            -o -name '*.png' -o -name '*.csv' \) -print0 | xargs -0 -r cp --parents -t "$keep")
    fi
    echo "$stamp $rc" >>"$keep/exit_status.txt"  # one line per call: time started, status
    cp "$OUT/remote.log" "$keep/remote.log" 2>/dev/null || true  # every call's log (appended)
    bundle "study-seed$SEED" "$keep"
    return "$rc"
}

# ------------------------------------------------------------------ contrast

step_contrast() {  # the study's two models under grey-level changes (experiments/contrast.py), after `study`
    need_data lucchi-derived/ contrast
    need_cuda
    local run=$BASE/ca1-gpu-seed$SEED rc=0
    [[ -d $run ]] || run=$run.partial  # a study stopped at its deadline keeps its trained models there
    [[ -f $run/model_2D/best.pt || -f $run/model_3D/best.pt ]] || {
        say "contrast: no trained study model in $BASE/ca1-gpu-seed$SEED (run 'study MINUTES' first)"; return 2; }
    local models=()
    for d in 2D 3D; do [[ -f $run/model_$d/best.pt ]] && models+=("$run/model_$d"); done
    say "contrast: ${models[*]##*/}, $(left) s left"
    bounded 0 "$PY" experiments/contrast.py "${models[@]}" --slices 32 --rules run matched \
        --out "$OUT/contrast-seed$SEED.json" || rc=$?
    return "$rc"
}

# ------------------------------------------------------------------ planes

step_planes() {  # the study's 2D model along one plane and three, with TTA (experiments/planes.py), after `study`
    need_data lucchi-derived/ planes
    need_cuda
    local run=$BASE/ca1-gpu-seed$SEED rc=0
    [[ -d $run ]] || run=$run.partial  # a study stopped at its deadline keeps its trained models there
    [[ -f $run/model_2D/best.pt ]] || {
        say "planes: no trained 2D study model in $BASE/ca1-gpu-seed$SEED (run 'study MINUTES' first)"; return 2; }
    say "planes: model_2D along 1 and 3 planes, TTA, $(left) s left"
    bounded 0 "$PY" experiments/planes.py "$run/model_2D" --tta --out "$OUT/planes-seed$SEED.json" || rc=$?
    return "$rc"
}

# ------------------------------------------------------------------ annotation

step_annotation() {  # the annotation curve of issue 11; rows are written one by one, so a stop keeps them
    local iterations=$1
    need_data lucchi-derived/ annotation
    need_cuda
    local work=$BASE/annotation-$iterations keep=$BASE/bundle-annotation/annotation-$iterations
    rm -rf "$(dirname "$keep")"
    mkdir -p "$keep" "$work"  # $work keeps the rows and finished runs of an earlier call on this machine
    gpu_record "$keep"
    trace_start "$keep/gpu-trace.csv"
    say "annotation: $iterations iterations per run, ${CHOICES:-3} slice choices, seeds ${SEEDS:-0}, $(left) s left"
    local rc=0 t0=$SECONDS seed parts="curve suggest"
    for seed in ${SEEDS:-0}; do  # suggest (seed 0's runs) only with the first seed; --only-new: rows of a stopped call stay
        bounded 0 "$PY" experiments/annotation.py --out "$work/annotation.json" --runs "$work/runs" --only-new \
            --parts $parts --dims 2 3 --counts 8 16 1 2 4 32 165 --choices "${CHOICES:-3}" --seed "$seed" \
            --iterations "$iterations" || { rc=$?; break; }
        parts=curve
    done
    trace_stop
    say "annotation: exit status $rc after $((SECONDS - t0)) s"
    cp "$work"/annotation.json "$work"/annotation.md "$keep/" 2>/dev/null || true
    echo "$rc" >"$keep/exit_status.txt"
    cp "$OUT/remote.log" "$keep/remote.log" 2>/dev/null || true
    bundle "annotation-$iterations" "$keep"
    return "$rc"
}

# ------------------------------------------------------------------ smoke

step_smoke() {  # the GPU path on synthetic data (no data needed): training speed, validation, prediction
    need_cuda
    local out=$BASE/smoke rc=0
    rm -rf "$out"
    mkdir -p "$out"
    bounded 240 "$PY" benchmarks/gpu/smoke.py --device cuda --out "$out" || rc=$?
    [[ -f $out/smoke.json ]] && cp "$out/smoke.json" "$OUT/smoke.json"
    return "$rc"
}

# ------------------------------------------------------------------ benchmarks

step_bench() {
    need_data drosophila-vnc-stack1 bench
    need_cuda
    local out=$BASE/bench
    rm -rf "$out"
    mkdir -p "$out"
    gpu_record "$out"
    trace_start "$out/gpu-trace.csv"
    local rc=0 rc2=0 t0=$SECONDS budget
    budget=$(( $(left) / 2 ))  # backends gets at most half of what is left, predict the rest
    say "bench: bench_backends.py (at most $budget s)"
    # shellcheck disable=SC2086  # BACKENDS_OPTIONS: options for bench_backends.py, e.g. --no-compile
    bounded "$budget" "$PY" benchmarks/bench_backends.py --device cuda --out "$out" ${BACKENDS_OPTIONS:-} || rc=$?
    say "bench: bench_backends exit $rc after $((SECONDS - t0)) s; bench_predict.py ($(left) s left)"
    t0=$SECONDS
    # shellcheck disable=SC2086  # PREDICT_OPTIONS: options for bench_predict.py, e.g. --repeat 3
    bounded 0 "$PY" benchmarks/bench_predict.py --device cuda --out "$out" ${PREDICT_OPTIONS:-} || rc2=$?
    say "bench: bench_predict exit $rc2 after $((SECONDS - t0)) s"
    trace_stop
    cp "$OUT/remote.log" "$out/remote.log" 2>/dev/null || true
    bundle bench "$out"
    ((rc == 0 && rc2 == 0))
}

step_fullvolume() {
    local model=$1
    shift
    need_data drosophila-vnc-stack1 fullvolume
    need_cuda
    local out=$BASE/fullvolume
    rm -rf "$out"
    mkdir -p "$out"
    gpu_record "$out"
    trace_start "$out/gpu-trace.csv"
    local args=(--device cuda --work "$BASE/full" --out "$out")
    [[ $model == - ]] || args+=(--model "$model")
    local rc=0 t0=$SECONDS
    say "fullvolume: bench_full_volume.py ${args[*]} $*"
    bounded 0 "$PY" benchmarks/bench_full_volume.py "${args[@]}" "$@" || rc=$?
    trace_stop
    say "fullvolume: exit $rc after $((SECONDS - t0)) s"
    cp "$OUT/remote.log" "$out/remote.log" 2>/dev/null || true
    bundle fullvolume "$out"
    return "$rc"
}

# ------------------------------------------------------------------ main

main() {
    say "start: $*; base $BASE; out $OUT; deadline $LIMIT s; python $PY"
    while (($#)); do
        local step=$1 t0=$SECONDS
        shift
        case $step in
            receive) step_receive ;;
            check) step_check ;;
            smoke) step_smoke ;;
            study)
                [[ ${1:-} =~ ^([0-9]+([.][0-9]+)?|full)$ ]] || { say "usage: study MINUTES|full"; return 2; }
                local minutes=$1
                shift
                step_study "$minutes" ;;
            annotation)
                [[ ${1:-} =~ ^[0-9]+$ ]] || { say "usage: annotation ITERATIONS"; return 2; }
                local iterations=$1
                shift
                step_annotation "$iterations" ;;
            contrast) step_contrast ;;
            planes) step_planes ;;
            bench) step_bench ;;
            fullvolume)
                (($#)) || { say "usage: fullvolume RUN|- [bench_full_volume.py options]"; return 2; }
                local model=$1
                shift
                step_fullvolume "$model" "$@"
                set -- ;;
            *) say "unknown step '$step' (receive, check, smoke, study MINUTES|full, contrast, planes, annotation ITERATIONS, bench, fullvolume RUN)"; return 2 ;;
        esac
        say "$step: done in $((SECONDS - t0)) s"
    done
    say "all done in $(($(date +%s) - START)) s"
}

main "$@" 2>&1 | tee -a "$OUT/remote.log"  # pipefail: the script's status is main's
