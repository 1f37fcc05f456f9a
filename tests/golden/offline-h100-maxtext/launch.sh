#!/usr/bin/env bash
# golden-offline: 3 xpk command(s) for cluster 'h100' (golden-project, us-central1-a).
# Rendered by distillc 0.1.0 from offline.yaml (sha256 9e9ef93f50d50938a54ccb7b8ec592ea205b2bd8850d6aac943d1d19bc23470a), target maxtext.
# Regenerate instead of editing (from the directory distillc ran in): distillc launch offline.yaml --clusters=clusters.yaml --cluster=h100 --target=maxtext --out=build/offline-h100-maxtext
set -euo pipefail
command -v xpk >/dev/null 2>&1 || { echo "launch.sh: xpk is not on PATH: pip install 'distillc[xpk]'" >&2; exit 127; }
# xpk layers this directory (the compiled configs) onto the base image as /app: run from here.
cd "$(dirname "$0")"

# golden-offline-topk: stage save_topk on h100-80gb-8 x 2
xpk workload create \
  --cluster=golden-a3 \
  --workload=golden-offline-topk \
  --device-type=h100-80gb-8 \
  --num-slices=2 \
  --base-docker-image=us-docker.pkg.dev/golden-project/distillc/distillc-cuda:0.1.0 \
  --script-dir=. \
  '--command=python3 -m maxtext.trainers.post_train.distillation.save_top_k_teacher_logits /app/maxtext.yml --top_k=64 --gcs_upload_path=gs://golden/topk/llama3.1-70b' \
  --project=golden-project \
  --zone=us-central1-a \
  --priority=medium \
  --max-restarts=0

# wait for golden-offline-topk to complete (xpk exits non-zero if it failed)
xpk workload list \
  --cluster=golden-a3 \
  --wait-for-job-completion=golden-offline-topk \
  --project=golden-project \
  --zone=us-central1-a

# golden-offline-train: stage train on h100-80gb-8 x 2
xpk workload create \
  --cluster=golden-a3 \
  --workload=golden-offline-train \
  --device-type=h100-80gb-8 \
  --num-slices=2 \
  --base-docker-image=us-docker.pkg.dev/golden-project/distillc/distillc-cuda:0.1.0 \
  --script-dir=. \
  '--command=python3 -m maxtext.trainers.post_train.distillation.train_distill /app/maxtext.yml' \
  --project=golden-project \
  --zone=us-central1-a \
  --priority=medium \
  --max-restarts=0
