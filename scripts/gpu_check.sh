#!/usr/bin/env bash
# GPU check (issue 5), about 5 minutes on one H100/H200 with no network.
#
# Prepare here (a machine with pip), once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip wheel --no-deps -w .whl .                      # resblock itself
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .whl \
#     jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
#     rpds-py==0.30.0 attrs==26.1.0
# Run there (carry .whl):  bash scripts/gpu_check.sh
# Figures land in $OUT (or ./gpu_check_out). DEVICE=cpu runs the same steps on a CPU to
# test the script itself (there the "default precision" set is not TF32, so step 5
# reports that instead of a rejection).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
DEVICE=${DEVICE:-gpu}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

if ! python3 -c "import resblock" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || { echo "install from .whl failed"; exit 2; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  export PATH=/tmp/site/bin:$PATH
fi
RB="python3 -m resblock"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/summary.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv \
  | tee -a "$OUT/summary.txt"

log "1. regenerate the default set on $DEVICE (precision highest)"
start=$(date +%s.%N)
$RB generate --preset default --device "$DEVICE" -o "$OUT/regen.h5" --force 2>&1 | tail -1 \
  | tee -a "$OUT/summary.txt"
end=$(date +%s.%N)
echo "   wall $(python3 -c "print(round($end - $start, 2))") s" | tee -a "$OUT/summary.txt"
$RB verify "$OUT/regen.h5" | tee -a "$OUT/summary.txt"; s1=${PIPESTATUS[0]}

log "2. diff against the committed CPU set (expect AGREE)"
$RB diff golden/default.h5 "$OUT/regen.h5" > "$OUT/diff_highest.txt"; s2=$?
tail -12 "$OUT/diff_highest.txt" | tee -a "$OUT/summary.txt"

log "3. the Flax reference checked on $DEVICE through resblock check (expect CONFORMS)"
$RB check --impl resblock.spec.reference:apply_block -q --json-report "$OUT/check.json" \
  | tail -3 | tee -a "$OUT/summary.txt"; s3=${PIPESTATUS[0]}

log "4. regenerate with JAX's default precision (TF32 convolutions on recent NVIDIA GPUs)"
$RB generate --preset default --device "$DEVICE" --precision default -o "$OUT/tf32.h5" \
  --force 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
$RB verify "$OUT/tf32.h5" > "$OUT/verify_tf32.txt"; s4=$?
grep -m3 -E "FAIL|ok " "$OUT/verify_tf32.txt" | cut -c1-300 | tee -a "$OUT/summary.txt"
$RB diff golden/default.h5 "$OUT/tf32.h5" > "$OUT/diff_tf32.txt"; s5=$?
tail -4 "$OUT/diff_tf32.txt" | tee -a "$OUT/summary.txt"

log "5. verdicts"
ok=1
[ "$s1" = 0 ] && echo "verify(highest): ok" || { echo "verify(highest): FAILED"; ok=0; }
[ "$s2" = 0 ] && echo "diff(highest): AGREE" || { echo "diff(highest): DISAGREE"; ok=0; }
[ "$s3" = 0 ] && echo "check(reference): CONFORMS" || { echo "check(reference): FAILED"; ok=0; }
if [ "$DEVICE" = "cpu" ]; then
  echo "tf32 step on CPU: verify exit $s4, diff exit $s5 (no TF32 on CPU: both expected 0)"
else
  [ "$s4" = 1 ] && echo "verify(TF32 set): rejected, as it must be" \
    || { echo "verify(TF32 set): NOT rejected"; ok=0; }
  [ "$s5" = 1 ] && echo "diff(TF32 set): DISAGREE, as it must" \
    || { echo "diff(TF32 set): NOT rejected"; ok=0; }
fi
[ $ok = 1 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED"
[ $ok = 1 ]
