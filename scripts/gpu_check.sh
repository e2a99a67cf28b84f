#!/usr/bin/env bash
# The GPU check in one call (issue 18): build here, carry the binaries, run once on the GPU machine.
#
#   scripts/gpu_check.sh build [cuda|wgpu]   on the CPU machine: writes gpu-check/ (ignored by git): the parity
#                                            suite in one test binary (tests/gpu_suite.rs) and the CLI, for that
#                                            backend, stripped and gzipped (the device tool carries 64 MiB)
#   scripts/gpu_check.sh run [cuda|wgpu]     on the GPU machine, from the repository root: writes to $OUT (else
#                                            gpu-check/out): device.txt, suite.log (every `<backend>::` test
#                                            of the suite), startup.txt (the same one-image caption three
#                                            times: a fresh kernel cache, then kept; f16 and bf16 captions with
#                                            a time limit), summary.txt
#
# With wgpu it runs on any Vulkan driver (Mesa lavapipe included), which is how the script itself is tested on a
# machine without a GPU. GPU_CHECK_FILTER narrows the suite (a test-name substring, e.g. `cuda::opt`).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
backend=${2:-cuda}
case "$backend" in cuda | wgpu) ;; *)
  echo "backend must be cuda or wgpu, not \`$backend\`" >&2
  exit 2
  ;;
esac
dir=gpu-check

case "$mode" in
build)
  mkdir -p "$dir"
  suite=$(cargo test --locked -p blip2-workspace-tests --features "gpu-suite,blip2-testkit/$backend" \
    --test gpu_suite --no-run --message-format=json-render-diagnostics |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_suite":
        print(m["executable"])')
  cargo build --locked -p blip2-cli --features "$backend"
  for pair in "$suite:gpu_suite-$backend" "target/debug/blip2:blip2-$backend"; do
    src=${pair%%:*}
    dst=$dir/${pair#*:}
    cp "$src" "$dst"
    strip "$dst"
    gzip -9 -f "$dst"
  done
  ls -l "$dir"
  echo "carry: $dir (run: scripts/gpu_check.sh run $backend)"
  ;;
run)
  out=${OUT:-$dir/out}
  mkdir -p "$out"
  for name in "gpu_suite-$backend" "blip2-$backend"; do
    if [ ! -x "$dir/$name" ]; then
      gunzip -kf "$dir/$name.gz"
      chmod +x "$dir/$name"
    fi
  done
  export BLIP2_FIXTURES=$PWD/fixtures
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
  {
    date -u
    uname -a
    nvidia-smi 2>&1 | head -n 15 || true
    "$dir/blip2-$backend" info 2>&1 || true
  } >"$out/device.txt"

  # The parity suite: every test of the backend, one process (kernels compiled once), one thread at a time.
  filter=${GPU_CHECK_FILTER:-$backend::}
  start=$(date +%s)
  rc=0
  "$dir/gpu_suite-$backend" "$filter" --test-threads 1 >"$out/suite.log" 2>&1 || rc=$?
  suite_s=$(($(date +%s) - start))

  # Start-up: the same caption with a fresh kernel cache, then twice with it kept; then half precision.
  image=fixtures/images/photo_45x33.jpg
  caption() {
    local label=$1
    shift
    local start rc=0
    start=$(date +%s%N)
    timeout 180 "$dir/blip2-$backend" caption "$image" -m fixtures/tiny-opt --device "$backend" \
      --max-new-tokens 8 --json "$@" >"$out/caption-$label.json" 2>"$out/caption-$label.err" || rc=$?
    echo "$label: exit $rc, $((($(date +%s%N) - start) / 1000000)) ms"
  }
  rm -rf "$out/kernels"
  {
    caption f32-cold --kernel-cache "$out/kernels"
    caption f32-kept --kernel-cache "$out/kernels"
    caption f32-kept2 --kernel-cache "$out/kernels"
    caption f32-off --kernel-cache off
    caption f16 --kernel-cache "$out/kernels" --dtype f16
    caption bf16 --kernel-cache "$out/kernels" --dtype bf16
    echo "cpu reference:"
    "$dir/blip2-$backend" caption "$image" -m fixtures/tiny-opt --device cpu --max-new-tokens 8 --json \
      2>/dev/null || true
  } >"$out/startup.txt" 2>&1
  du -sh "$out/kernels" >>"$out/startup.txt" 2>&1 || true

  {
    echo "suite ($filter): exit $rc, $suite_s s"
    grep -E '^test result:' "$out/suite.log" || true
    grep -E '^test .* FAILED$' "$out/suite.log" || true
    cat "$out/startup.txt"
  } >"$out/summary.txt"
  cat "$out/summary.txt"
  ;;
*)
  sed -n '2,14p' "$0" >&2
  exit 2
  ;;
esac
