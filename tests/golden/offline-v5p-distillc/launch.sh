#!/usr/bin/env bash
# golden-offline: 3 xpk command(s) for cluster 'v5p' (golden-project, us-east5-a).
# Rendered by distillc 0.1.0 from offline.yaml (sha256 9e9ef93f50d50938a54ccb7b8ec592ea205b2bd8850d6aac943d1d19bc23470a), target distillc.
# Regenerate instead of editing (from the directory distillc ran in): distillc launch offline.yaml --clusters=clusters.yaml --cluster=v5p --target=distillc --out=build/offline-v5p-distillc
set -euo pipefail
command -v xpk >/dev/null 2>&1 || { echo "launch.sh: xpk is not on PATH: pip install 'distillc[xpk]'" >&2; exit 127; }
cd "$(dirname "$0")"

# golden-offline-topk: stage save_topk on v5p-128 x 1
xpk workload create \
  --cluster=golden-v5p \
  --workload=golden-offline-topk \
  --tpu-type=v5p-128 \
  --num-slices=1 \
  --docker-image=us-docker.pkg.dev/golden-project/distillc/distillc:0.1.0 \
  '--command=printenv DISTILLC_CONFIG_B64 | python3 -m base64 -d > /tmp/config-save_topk.json && python3 -m distillc.runtime.main --config /tmp/config-save_topk.json' \
  --project=golden-project \
  --zone=us-east5-a \
  --priority=high \
  --max-restarts=3 \
  --restart-on-exit-codes=1 \
  --env=JAX_TRACEBACK_FILTERING=off \
  '--env=NOTE=quotes \" and \\ survive' \
  --env=DISTILLC_CONFIG_B64="$(python3 -m base64 -e config-save_topk.json | tr -d '\n')"

# wait for golden-offline-topk to complete (xpk exits non-zero if it failed)
xpk workload list \
  --cluster=golden-v5p \
  --wait-for-job-completion=golden-offline-topk \
  --project=golden-project \
  --zone=us-east5-a

# golden-offline-train: stage train on v5p-128 x 1
xpk workload create \
  --cluster=golden-v5p \
  --workload=golden-offline-train \
  --tpu-type=v5p-128 \
  --num-slices=1 \
  --docker-image=us-docker.pkg.dev/golden-project/distillc/distillc:0.1.0 \
  '--command=printenv DISTILLC_CONFIG_B64 | python3 -m base64 -d > /tmp/config-train.json && python3 -m distillc.runtime.main --config /tmp/config-train.json' \
  --project=golden-project \
  --zone=us-east5-a \
  --priority=high \
  --max-restarts=3 \
  --restart-on-exit-codes=1 \
  --env=JAX_TRACEBACK_FILTERING=off \
  '--env=NOTE=quotes \" and \\ survive' \
  --env=DISTILLC_CONFIG_B64="$(python3 -m base64 -e config-train.json | tr -d '\n')"
