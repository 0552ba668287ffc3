#!/usr/bin/env bash
# Prepare the payload of a GPU run (runs HERE, on the CPU machine, from the repository root):
#   .gpu/wheels/     wheels (CPython 3.12, manylinux x86_64) of the packages the GPU machine lacks
#   .gpu/sendN/      what one device call carries: send1 holds the wheels, every sendN pieces of the data
#   .gpu/PLAN.txt    the device calls (command and carry) of the study and bench plans
# .gpu/ is ignored through .git/info/exclude (not .gitignore). Rerun right before the device calls: the
# size of the working tree, which travels with every call, sets how much each send folder may hold.
#
# Environment: LIMIT_MIB (default 60: MiB one call carries, tree included; the tool's hard limit is 64),
#   LUCCHI (default ../shared/data/lucchi-derived), DROSO (default ../shared/data/drosophila-vnc-stack1),
#   KINDS (default ../.library/device/KINDS.md), PYTHON (default .venv/bin/python, else python3).
set -euo pipefail

root=$(git rev-parse --show-toplevel)
cd "$root"
LIMIT_MIB=${LIMIT_MIB:-60}
SHARED=$(cd "$root/.." && pwd)/shared/data
LUCCHI=${LUCCHI:-$SHARED/lucchi-derived}
DROSO=${DROSO:-$SHARED/drosophila-vnc-stack1}
KINDS=${KINDS:-../.library/device/KINDS.md}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEST=.gpu

# 1. ignore .gpu/ and .whl/ in this clone only
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for line in /.gpu/ /.whl/; do
    grep -qxF "$line" "$exclude" || echo "$line" >>"$exclude"
done
mkdir -p "$DEST/wheels" "$DEST/build"
git check-ignore -q "$DEST/wheels" || { echo "prepare.sh: $DEST is not ignored by git" >&2; exit 1; }

# 2. wheels: the versions installed in .venv where it has them, else these pins. Not carried, because
#    the GPU machine has them (KINDS.md) or no planned step imports them: ome-zarr (only for *.ome.zarr
#    outputs), napari, bioimageio. zarr 3 needs donfig, numcodecs, google-crc32c (not crc32c); dask needs
#    partd -> locket; distributed (labelling on a LocalCluster in `fullvolume`) needs tornado, tblib, zict.
declare -A PIN=([monai]=1.6.1 [zarr]=3.1.6 [numcodecs]=0.16.6 [donfig]=0.8.1.post1 [google-crc32c]=1.9.0
                [connected-components-3d]=4.1.1 [edt]=3.1.2 [dask]=2026.8.0 [partd]=1.4.2 [locket]=1.0.0
                [distributed]=2026.8.0 [tornado]=6.6.1 [tblib]=3.2.2 [zict]=3.0.0)
specs=()
wanted=()
for name in monai zarr numcodecs donfig google-crc32c connected-components-3d edt dask partd locket \
            distributed tornado tblib zict; do
    version=$("$PYTHON" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$name" \
              2>/dev/null || echo "${PIN[$name]}")
    file=${name//-/_}-$version-
    wanted+=("$file")
    if ! compgen -G "$DEST/wheels/$file*.whl" >/dev/null; then specs+=("$name==$version"); fi
done
if ((${#specs[@]})); then
    echo "downloading: ${specs[*]}"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$DEST/wheels" "${specs[@]}"
fi
for whl in "$DEST"/wheels/*.whl; do  # one version of each: drop wheels of other versions
    keep=0
    for file in "${wanted[@]}"; do [[ $(basename "$whl") == "$file"* ]] && keep=1; done
    ((keep)) || { echo "removing stale $(basename "$whl")"; rm -f "$whl"; }
done
echo "wheels:"
ls -l "$DEST/wheels" | awk 'NR > 1 {printf "  %-95s %6.2f MiB\n", $9, $5 / 1048576}'

# 3. data: the CA1 (Lucchi) derived copy, and the Drosophila stack (benchmarks) as one reproducible tar
for f in README.md training.tif training_groundtruth.tif testing.tif testing_groundtruth.tif; do
    [[ -f $LUCCHI/$f ]] || { echo "prepare.sh: $LUCCHI/$f is missing" >&2; exit 1; }
done
[[ -d $DROSO/raw ]] || { echo "prepare.sh: $DROSO/raw is missing" >&2; exit 1; }
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r \
    -C "$(dirname "$DROSO")" -cf "$DEST/build/drosophila-vnc-stack1.tar" "$(basename "$DROSO")"

# 4. pack into send folders and print the device calls
"$PYTHON" benchmarks/gpu/pack.py --dest "$DEST" --limit-mib "$LIMIT_MIB" --wheels "$DEST/wheels" \
    --kinds "$KINDS" \
    --item "lucchi-derived/README.md=$LUCCHI/README.md" \
    --item "lucchi-derived/training_groundtruth.tif=$LUCCHI/training_groundtruth.tif" \
    --item "lucchi-derived/testing_groundtruth.tif=$LUCCHI/testing_groundtruth.tif" \
    --item "lucchi-derived/training.tif=$LUCCHI/training.tif" \
    --item "lucchi-derived/testing.tif=$LUCCHI/testing.tif" \
    --item "drosophila-vnc-stack1.tar=$DEST/build/drosophila-vnc-stack1.tar" --untar drosophila-vnc-stack1.tar \
    --plan "study (CA1 compare, MINUTES per model)=lucchi-derived/=check study MINUTES" \
    --plan "bench (backends + predict, Drosophila stack)=drosophila-vnc-stack1=check bench"
rm -f "$DEST/build/drosophila-vnc-stack1.tar"

# 5. check the SHA-256 of the CA1 files against the data folder's README
checked=0
while read -r sum name; do
    got=$(awk -F'\t' -v d="lucchi-derived/$name" '$1 == d {print $3}' "$DEST/send1/manifest/files.tsv")
    [[ $got == "$sum" ]] && echo "  sha256 of $name matches the README" \
        || { echo "prepare.sh: sha256 of $name differs from the README" >&2; exit 1; }
    checked=$((checked + 1))
done < <(grep -E '^[0-9a-f]{64}  ' "$LUCCHI/README.md")
((checked == 4)) || { echo "prepare.sh: found $checked of 4 SHA-256 lines in $LUCCHI/README.md" >&2; exit 1; }
echo "sizes:"
du -sh "$DEST"/send* | sed 's/^/  /'
echo "Run the calls above with the device tool 'run' (see benchmarks/gpu/README.md); plan saved in $DEST/PLAN.txt"
