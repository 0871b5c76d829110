#!/usr/bin/env bash
# Create the work pools bedrock-batch-flows deploys to, and optionally the global concurrency limit
# that mirrors Bedrock's in-flight job quota. Idempotent: what exists is left as it is (a limit's size
# is updated), so it is safe to run from CI on every deploy.
#
#   deployments/setup-work-pools.sh                       # process + ECS pools
#   ECS_POOL= deployments/setup-work-pools.sh             # process pool only
#   GCL_NAME=bedrock-batch-us-east-1-us.anthropic.claude-3-5-haiku-20241022-v1:0 GCL_LIMIT=20 \
#     deployments/setup-work-pools.sh                     # also pre-create / resize a quota limit
#
# Environment: PREFECT (CLI, default `prefect`; e.g. .venv/bin/prefect), PREFECT_API_URL (the server),
# PROCESS_POOL, ECS_POOL (empty = skip), ECS_BASE_JOB_TEMPLATE (a JSON file from
# `prefect work-pool get-default-base-job-template --type ecs`, edited), GCL_NAME, GCL_LIMIT.
set -euo pipefail

PREFECT=${PREFECT:-prefect}
PROCESS_POOL=${PROCESS_POOL-bedrock-batch-process}
ECS_POOL=${ECS_POOL-bedrock-batch-ecs}
ECS_BASE_JOB_TEMPLATE=${ECS_BASE_JOB_TEMPLATE:-}
GCL_NAME=${GCL_NAME:-}
GCL_LIMIT=${GCL_LIMIT:-20}

ensure_pool() {
  local name=$1 type=$2 template=${3:-}
  if "$PREFECT" work-pool inspect "$name" >/dev/null 2>&1; then
    echo "work pool '$name' exists: skipped"
    return
  fi
  local args=(work-pool create "$name" --type "$type")
  if [[ -n $template ]]; then
    args+=(--base-job-template "$template")
  fi
  "$PREFECT" "${args[@]}"
}

ensure_limit() {
  local name=$1 limit=$2
  if "$PREFECT" gcl inspect "$name" >/dev/null 2>&1; then
    "$PREFECT" gcl update "$name" --limit "$limit"
  else
    "$PREFECT" gcl create "$name" --limit "$limit"
  fi
}

[[ -n $PROCESS_POOL ]] && ensure_pool "$PROCESS_POOL" process
# The ecs worker type comes from prefect-aws (in requirements.txt).
[[ -n $ECS_POOL ]] && ensure_pool "$ECS_POOL" ecs "$ECS_BASE_JOB_TEMPLATE"
[[ -n $GCL_NAME ]] && ensure_limit "$GCL_NAME" "$GCL_LIMIT"
exit 0
