#!/usr/bin/env bash
# golden-prune: 1 xpk command(s) for cluster 'v5p' (golden-project, us-east5-a).
# Rendered by distillc 0.1.0 from pruning.yaml (sha256 518b60d599f6897941d1fc1ab9b0757935724e3485e885483b435513c2e0877b), target maxtext.
# Regenerate instead of editing (from the directory distillc ran in): distillc launch pruning.yaml --clusters=clusters.yaml --cluster=v5p --target=maxtext --out=build/pruning-v5p-maxtext
set -euo pipefail
command -v xpk >/dev/null 2>&1 || { echo "launch.sh: xpk is not on PATH: pip install 'distillc[xpk]'" >&2; exit 127; }
cd "$(dirname "$0")"

# golden-prune: stage train on v5p-128 x 1
xpk workload create \
  --cluster=golden-v5p \
  --workload=golden-prune \
  --tpu-type=v5p-128 \
  --num-slices=1 \
  --docker-image=us-docker.pkg.dev/golden-project/distillc/distillc:0.1.0 \
  '--command=printenv DISTILLC_CONFIG_B64 | python3 -m base64 -d > /tmp/maxtext.yml && python3 -m maxtext.trainers.post_train.distillation.train_distill /tmp/maxtext.yml' \
  --project=golden-project \
  --zone=us-east5-a \
  --priority=high \
  --max-restarts=3 \
  --restart-on-exit-codes=1 \
  --env=JAX_TRACEBACK_FILTERING=off \
  '--env=NOTE=quotes \" and \\ survive' \
  --env=DISTILLC_CONFIG_B64="$(python3 -m base64 -e maxtext.yml | tr -d '\n')"
