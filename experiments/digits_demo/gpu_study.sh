#!/usr/bin/env bash
# The digits study (experiment=digits_study) and a sweep of the small segmenter's recipe, together on
# one GPU machine, as one call of a few minutes:
#
#   bash experiments/digits_demo/gpu_study.sh OUT [BUDGET_S]
#
# SWEEP=1 adds the recipe sweep of the first run (experiments/digits_demo/README.md).
# The study's jobs run as parallel pipelines that share one cache (each job is locked, so a job that
# two pipelines need is trained once and reused by the other): per seed, one pipeline for
# source-only + rows (a)-(c) and one for the oracle + rows (d)-(f); one for the target DDPM; one for
# the judge and the translation-quality analysis. A last pipeline over every row and seed then only
# reuses, and writes results.json / results.md / timings.json. Everything small comes back in
# OUT/study.tgz (no checkpoints); OUT/results.md and OUT/sweep.json beside it.
set -u
OUT=${1:?usage: gpu_study.sh OUT [BUDGET_S]}
BUDGET=${2:-420}
mkdir -p "$OUT/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 \
       PYTHONUNBUFFERED=1 MPLBACKEND=Agg WANDB_MODE=disabled
PY=${PY:-python3}
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/logs/gpu.txt"

# fail in seconds, not minutes, when a package is missing
$PY -c "import diffusers, albumentations, hydra, dasslab.commands.train, dasslab.lit.ptl_module, dasslab.analysis.translation_quality" \
    || exit 1
# the digits cache, generated once before the pipelines start
$PY -c "from dasslab.data.digits import make_digits; make_digits('data/digits', 32, 3000, 600, 0)" \
    > "$OUT/logs/data.log" 2>&1 || { cat "$OUT/logs/data.log"; exit 1; }
echo "data ready after $(( $(date +%s) - T0 )) s"

# ACCEL / EXTRA / PROBE_DEVICE / PROBE_STEPS: a tiny CPU rehearsal of this script, e.g.
#   ACCEL=cpu PROBE_DEVICE=cpu PROBE_STEPS=20 EXTRA="debug=smoke paths.cache_dir=/tmp/gs" bash … /tmp/o 300
TRAIN="$PY -m dasslab.commands.train experiment=digits_study trainer.accelerator=${ACCEL:-gpu} ${EXTRA:-}"
pids=()
launch() {  # name, then overrides
    local name=$1; shift
    timeout "$BUDGET" $TRAIN task_name="gpu_$name" "$@" > "$OUT/logs/$name.log" 2>&1 &
    pids+=($!)
}
launch ddpm 'pipeline.rows=[diffusion]'
launch quality 'pipeline.rows=[translation_quality]'
for s in 0 1 2; do
    launch "a$s" "pipeline.seeds=[$s]" 'pipeline.rows=[source_only,baseline,wo_sgg,wo_ptl]' pipeline.parallel=1
    launch "b$s" "pipeline.seeds=[$s]" 'pipeline.rows=[oracle,wo_lcg,wo_gsg,full]' pipeline.parallel=1
done

# how the translations depend on the DDPM's training budget: the quality analysis with longer DDPMs
launch q3000 'pipeline.rows=[translation_quality]' diffusion.max_steps=3000
launch q6000 'pipeline.rows=[translation_quality]' diffusion.max_steps=6000
[ -n "${SWEEP:-}" ] && {
# the recipe sweep (in-memory, one process each): widths, lr, batch
sweep() {  # tag, then probe arguments
    local tag=$1; shift
    timeout "$BUDGET" $PY experiments/digits_demo/probe.py --device "${PROBE_DEVICE:-cuda}" \
        --steps "${PROBE_STEPS:-3000}" --eval-every $(( ${PROBE_STEPS:-3000} / 12 )) \
        --out "$OUT/logs/sweep_$tag.json" "$@" > "$OUT/logs/sweep_$tag.log" 2>&1 &
}
sweep ref      --widths 32,64,128 --lr 2e-3 --batch 16
sweep lr1e-3   --widths 32,64,128 --lr 1e-3 --batch 16
sweep lr4e-3   --widths 32,64,128 --lr 4e-3 --batch 16
sweep b32      --widths 32,64,128 --lr 2e-3 --batch 32
sweep w16-48   --widths 16,48,128 --lr 2e-3 --batch 16
sweep w16-32   --widths 16,32,128 --lr 2e-3 --batch 16
sweep w24      --widths 24,48,96  --lr 2e-3 --batch 16
sweep w16-64   --widths 16,64,128 --lr 3e-3 --batch 16
}

fails=0
for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
wait
echo "pipelines done after $(( $(date +%s) - T0 )) s, $fails failed"
# every row and seed: reuses the cache, writes the tables
timeout 70 $TRAIN task_name=gpu_all pipeline.parallel=1 > "$OUT/logs/all.log" 2>&1 || echo "final pipeline failed"
RUN=$(ls -d outputs/gpu_all/*/ 2>/dev/null | tail -n 1)
[ -n "$RUN" ] && cp "$RUN/results.json" "$RUN/timings.json" "$OUT/" 2>/dev/null
cp "$RUN/results.md" "$OUT/results.md" 2>/dev/null
$PY - "$OUT" <<'EOF'
import glob, json, sys
out = sys.argv[1]
runs = [json.load(open(f))[-1] for f in sorted(glob.glob(f"{out}/logs/sweep_*.json"))]
json.dump(runs, open(f"{out}/sweep.json", "w"), indent=1)
for r in runs:
    a = r["args"]
    print(a["widths"], a["lr"], a["batch"], [(c["step"], round(c["target_val"]["miou"], 1)) for c in r["curve"][1::2]])
EOF
tar czf "$OUT/study.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.pt' --exclude='*.lock' \
    outputs/cache outputs/gpu_* "$OUT/logs" 2>/dev/null
for q in q3000 q6000; do grep -h -A12 "^| setting" outputs/gpu_$q/*/results.md 2>/dev/null | sed "s/^/$q /"; done
echo "total $(( $(date +%s) - T0 )) s"; tail -n 40 "$OUT/results.md" 2>/dev/null
