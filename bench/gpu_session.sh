#!/usr/bin/env bash
# One GPU-host session's steps, run after the vLLM bundle is installed (../shared/device):
#   bash bench/gpu_session.sh STEP [STEP ...]     steps: env deploy deploy-quick kvslab
#                                                 kvslab-accept kvslab-accept-quick interference
#                                                 profile (all GPUs of the host) e2e:CFGS
#                                                 e2e-quick:CFGS e2e-lanes:SPEC (2-GPU host)
#                                                 multigpu multigpu-quick (2-GPU host)
#                                                 prefill-probe (PROBE_MODEL, PROBE_SM)
#   (e2e:a runs configuration (a) of bench/e2e/run.py; CFGS is a comma list of a, b, c;
#   e2e-lanes:"a@0;c@1" runs (a) on GPU 0 beside (c) on GPU 1, bench/e2e/lanes.py; it
#   writes e2e-lanes.log, e2e-lanes.tgz (merged results), e2e-lanes-logs.tgz (lane, engine
#   logs))
# (no step: only install the carried wheels). After `profile`, on the development machine:
#   tar xzf h100-profile.tgz -C bench/results/h100-profile
#   python bench/profile_h100.py --out bench/results/h100-profile --ship fineserve/profiles/data/measured
# Each step runs under its own time limit, keeps going when another fails, and copies its
# results to $OUT (at most 8 files per call come back; each step writes at most 4).
# Missing pure-Python dependencies of fineserve travel as wheels in .whl/ and are installed
# into /tmp/extra, consulted after the host's own packages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fs-out}; mkdir -p "$OUT"
[ -f /tmp/site/env.sh ] && . /tmp/site/env.sh
export PYTHONPATH=$PWD:${PYTHONPATH:-}:/tmp/extra PYTHONUNBUFFERED=1
PY=${PY:-python3}

prep() {
  [ -f /tmp/extra/.done ] && return
  mkdir -p /tmp/extra
  local need=()
  for pair in aiohttp:aiohttp multidict:multidict yarl:yarl frozenlist:frozenlist \
      aiosignal:aiosignal propcache:propcache aiohappyeyeballs:aiohappyeyeballs attr:attrs \
      prometheus_client:prometheus_client uvloop:uvloop rich:rich markdown_it:markdown_it_py \
      mdurl:mdurl pygments:pygments yaml:pyyaml pynvml:nvidia_ml_py; do
    mod=${pair%%:*}; whl=${pair##*:}
    $PY -c "import $mod" 2>/dev/null || need+=(.whl/${whl}-*.whl)
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing into /tmp/extra: ${need[*]}"
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/extra "${need[@]}"
  fi
  touch /tmp/extra/.done
}

step() {  # step NAME LIMIT_S COMMAND...
  # the log is written into $OUT as it runs: a call killed past its device limit still
  # brings back everything the step printed until then
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - t0 ))s"
  tail -25 "$OUT/$name.log"
}

prep
for s in "$@"; do
  case $s in
    env) step env 120 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode \
           --format=csv; $PY -c 'import vllm, torch, aiohttp, prometheus_client, pydantic, yaml, \
           rich, typer, pandas, pynvml; print(\"vllm\", vllm.__version__, \"torch\", torch.__version__)'; \
           $PY -m fineserve.cli.app plan | tail -5" ;;
    deploy|deploy-quick)
      flag=""; [ "$s" = deploy-quick ] && flag="--quick"
      step "$s" "${DEPLOY_LIMIT:-560}" $PY bench/deploy_h100.py $flag ${DEPLOY_ARGS:-} \
           --out /tmp/fs-deploy/deploy_h100
      cp /tmp/fs-deploy/deploy_h100.* "$OUT/" 2>/dev/null
      tar czf "$OUT/deploy-logs.tgz" -C /tmp fineserve-bench-deploy 2>/dev/null ;;
    kvslab)
      step kvslab "${KVSLAB_LIMIT:-300}" $PY bench/kvslab_gpu.py --quick ${KVSLAB_ARGS:---vllm} \
           --out /tmp/fs-kvslab
      cp /tmp/fs-kvslab/*.json "$OUT/" 2>/dev/null ;;
    kvslab-accept|kvslab-accept-quick)
      # issue 6 acceptance: static best split vs KV pool, 3 engines under MPS (~8 min, one call)
      flag=""; [ "$s" = kvslab-accept-quick ] && flag="--quick"
      step "$s" "${ACCEPT_LIMIT:-570}" $PY bench/kvslab_accept.py $flag ${ACCEPT_ARGS:-} \
           --budget-s "${ACCEPT_BUDGET:-470}" --out /tmp/fs-accept
      cp /tmp/fs-accept/kvslab_accept.json /tmp/fs-accept/kvslab_accept.md \
         /tmp/fs-accept/kvslab_accept-logs.txt "$OUT/" 2>/dev/null ;;
    interference)
      step interference "${INTF_LIMIT:-260}" $PY bench/interference_h100.py \
           --scenarios pair-50-50,triple-33 --batch 16 --probe-tokens 512 --phase-s 8 \
           --out /tmp/fs-intf --budget-s "${INTF_BUDGET:-190}"
      cp /tmp/fs-intf/interference* "$OUT/" 2>/dev/null ;;
    profile)
      # the reference set, resumed from the committed results: measures only what is missing,
      # on every GPU of the host at once (one process per GPU, merged into /tmp/fs-prof); it
      # stops before measuring if the GPUs are not all H100s
      ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); [ "${ngpu:-0}" -ge 1 ] || ngpu=1
      echo "profile: $ngpu GPU(s)"
      step profile "${PROFILE_LIMIT:-500}" $PY bench/profile_h100.py --reference-set --redo-noisy \
           --gpus "${PROFILE_GPUS:-$ngpu}" --resume-from bench/results/h100-profile \
           --out /tmp/fs-prof --budget-s "${PROFILE_BUDGET:-460}"
      # a call killed past its limit leaves shard folders: fold them in before packing
      $PY bench/profile_h100.py --reference-set --out /tmp/fs-prof --merge-shards \
           >> "$OUT/profile.log" 2>&1
      tar czf "$OUT/h100-profile.tgz" -C /tmp/fs-prof . ;;
    prefill-probe)
      # issue 5: one (model, SM share) prefill turn on PROBE_STARTS fresh engines, then once
      # with enforce_eager, each log saying the CUDA-graph mode of every timed step (session
      # 7: the 3B's SM-100 turn was bimodal across engine starts)
      model=${PROBE_MODEL:-llama-3.2-3b}; sm=${PROBE_SM:-100}; rm -rf /tmp/fs-probe
      for k in $(seq 1 "${PROBE_STARTS:-3}") eager; do
        flag=""; [ "$k" = eager ] && flag="--eager"
        step "probe-$k" "${PROBE_LIMIT:-150}" $PY bench/profile_h100.py --model "$model" \
             --precisions bf16 --sm "$sm" --decode-batches 1 --decode-contexts 256 \
             --no-redo-noisy $flag --out "/tmp/fs-probe/$k"
        grep -h "CUDA-graph modes\|timed on the device" -r "/tmp/fs-probe/$k" "$OUT/probe-$k.log" \
             2>/dev/null | sort | uniq -c | head -12
      done
      tar czf "$OUT/prefill-probe.tgz" -C /tmp fs-probe ;;
    e2e:*|e2e-quick:*)
      # bench/e2e: one deployment per configuration, resumed from the committed results
      # (bench/e2e/results travels with the tree); only this run's new files come back
      cfgs=${s#*:}; flag=""; res=bench/e2e/results
      if [ "${s%%:*}" = e2e-quick ]; then
        flag="--quick"; res=/tmp/fs-e2e-quick; mkdir -p "$res"
        cp -n bench/e2e/results/plan-*.yaml "$res/" 2>/dev/null  # same models and rates
      fi
      touch /tmp/e2e-stamp
      step "e2e-${cfgs//,/}" "${E2E_LIMIT:-580}" $PY bench/e2e/run.py --configs "$cfgs" $flag \
           --out "$res" --budget-s "${E2E_BUDGET:-510}" ${E2E_ARGS:-}
      find "$res" -newer /tmp/e2e-stamp \( -name '[abc]-r*.json' -o -name '*-requests.tgz' \) \
           -exec cp {} "$OUT/" \; ;;
    e2e-lanes:*)
      # bench/e2e/lanes.py: configurations side by side, one GPU each (2-GPU host). A call
      # killed past its limit leaves deployments running on a warm machine: stop them first
      # (lanes.py does too, then empties the lane folders). On SIGTERM at the limit lanes.py
      # stops the lanes within 5 s and still merges and packs, inside --kill-after's 15 s.
      spec=${s#*:}; base=${E2E_RESULTS:-bench/e2e/results-r3}; res=$base; lw=/tmp/fineserve-e2e-lanes
      # the predictions are for H100s: on other GPUs (an x4 that came as H200s) the run goes to
      # its own folder, seeded with the same workload and plans (variant subfolders' plans too)
      names=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)
      if [ -n "$names" ] && echo "$names" | grep -qv H100; then
        kind=other; echo "$names" | grep -q H200 && kind=h200
        res=$base-$kind; mkdir -p "$res"
        cp -n "$base"/bench.json "$base"/calibration.json "$base"/plan-*.yaml "$res/"
        for d in "$base"/*/; do
          ls "$d"plan-*.yaml >/dev/null 2>&1 || continue
          mkdir -p "$res/$(basename "$d")" && cp -n "$d"plan-*.yaml "$res/$(basename "$d")/"
        done
        echo "e2e-lanes: GPUs are not all H100 ($(echo $names)): results into $res"
      fi
      for d in "$lw"/lane*/*/run*; do
        [ -f "$d/state.json" ] && $PY -m fineserve.cli.deploy_cmd stop --run-dir "$d" --wait 30
      done
      step e2e-lanes "${E2E_LIMIT:-560}" $PY bench/e2e/lanes.py --lanes "$spec" --work "$lw" \
           --merge-into "$res" --pack "$OUT/e2e-lanes.tgz" -- \
           --rates "${E2E_RATES:-1,2,2.5,3,3.5,4}" --budget-s "${E2E_BUDGET:-520}" ${E2E_ARGS:-}
      # each lane's log and its deployments' engine, gateway and MPS logs (one file)
      logs=$(cd "$lw" 2>/dev/null && ls -d lane*/lane.log lane*/*/run*/logs 2>/dev/null)
      [ -n "$logs" ] && tar czf "$OUT/e2e-lanes-logs.tgz" -C "$lw" $logs ;;
    multigpu|multigpu-quick)
      # 2-GPU host (issue 8): ILP plan with a TP=2 engine under MPS, replay vs simulator;
      # the bench stops its deployment itself, well inside the limit (~5-7 min, quick ~3-4)
      flag=""; [ "$s" = multigpu-quick ] && flag="--quick"
      step "$s" "${MULTIGPU_LIMIT:-560}" $PY bench/multigpu.py $flag ${MULTIGPU_ARGS:-} \
           --out /tmp/fs-mg
      cp /tmp/fs-mg/multigpu.json /tmp/fs-mg/multigpu.md /tmp/fs-mg/plan.yaml "$OUT/" 2>/dev/null
      (cd /tmp/fineserve-bench-multigpu 2>/dev/null && \
         tar czf "$OUT/multigpu-logs.tgz" run-*/logs run-*/state.json 2>/dev/null) ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
