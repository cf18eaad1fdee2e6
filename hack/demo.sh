#!/usr/bin/env bash
# The main job, for real: the dev cluster with its real node, this checkout's images
# built and pushed to the dev registry, the chart installed (the operator runs as a pod),
# and the local chain (samples/local/chain.yaml) run in real containers on the node's
# CPU: raw text in the object store -> cleaned, deduplicated, tokenized shards -> a tiny
# Llama-style model pretrained for a minute -> a LoRA fine-tune on a chat set -> an int8
# model that passed its perplexity gate, all on a claim the provisioner made -> that
# model served behind the router, answering a chat completion (API key enforced) -> the
# unquantized model rolled out as a canary that Prometheus analysis promotes, and a
# corrupt one that it rolls back on its own.
# The cluster is left running for you to explore; `modelsmith dev down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
stage_name=""
stage_started=0
stage() {
  if [ -n "$stage_name" ]; then
    timings+=("$(printf '%-58s %5d s' "$stage_name" $((SECONDS - stage_started)))")
  fi
  stage_name=$1
  stage_started=$SECONDS
  if [ -n "$1" ]; then printf '\n== %s\n' "$1"; fi
}

stage "bootstrap: virtualenv, Go tools (cached after the first run)"
bash hack/bootstrap.sh
. .venv/bin/activate
# This demo runs real pods: a node that cannot start is an error, not a kwok-only cluster.
export MODELSMITH_DEV_REAL_NODE=require
ns=modelsmith-demo
bucket=modelsmith-local

stage "dev cluster: control plane, kwok's fake GPU nodes, one real node"
modelsmith dev up
eval "$(modelsmith dev env)"
kubectl get nodes -L modelsmith.io/real-node

stage "images and chart: build, push to the dev registry, helm install"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
modelsmith dev install --watch "$ns"
kubectl get pods -n modelsmith-system -o wide

stage "a manifest the API server refuses (workers: 0)"
if kubectl apply -n "$ns" -f samples/invalid-datapipeline.yaml; then
  echo "expected the invalid manifest to be rejected" >&2; exit 1
fi

stage "the data: the standard library's docstrings, into the object store"
python -m modelsmith.devcluster.samplecorpus upload "$bucket"
kubectl create secret generic modelsmith-s3 -n "$ns" --dry-run=client -o yaml \
  --from-env-file=<(python -m modelsmith.devcluster.samplecorpus pod-env) | kubectl apply -f - >/dev/null
kubectl apply -n "$ns" -f samples/storage.yaml

stage "the chain: samples/local/chain.yaml, every stage a real pod"
kubectl delete -n "$ns" -f samples/local/chain.yaml --ignore-not-found --wait >/dev/null
kubectl apply -n "$ns" -f samples/local/chain.yaml
for r in datapipeline/local-corpus pretrainjob/local-llama finetune/local-llama-chat \
         quantizejob/local-llama-chat-int8; do
  started=$SECONDS
  until phase=$(kubectl get -n "$ns" "$r" -o jsonpath='{.status.phase}') &&
        [ "$phase" = Succeeded ] || [ "$phase" = Failed ]; do
    if [ $((SECONDS - started)) -gt 900 ]; then echo "$r: still ${phase:-Pending} after 900 s" >&2; exit 1; fi
    # A pod the scheduler cannot place would wait forever: say why instead.
    why=$(kubectl get pods -n "$ns" -l "batch.kubernetes.io/job-name=${r#*/}-run" -o \
      jsonpath='{.items[*].status.conditions[?(@.reason=="Unschedulable")].message}')
    if [ -n "$why" ] && [ $((SECONDS - started)) -gt 60 ]; then
      echo "$r: its pod cannot be scheduled: $why" >&2; exit 1
    fi
    sleep 3
  done
  kubectl get -n "$ns" "$r"
  if [ "$phase" = Failed ]; then
    kubectl get -n "$ns" "$r" -o jsonpath='{range .status.conditions[*]}{.type}: {.message}{"\n"}{end}' >&2
    exit 1
  fi
  timings+=("$(printf '  %-56s %5d s' "$r" $((SECONDS - started)))")
done

stage "what the chain produced (status.outputs, as the pods reported it)"
metric() { kubectl get -n "$ns" "$1" -o jsonpath="{.status.outputs.metrics.$2}"; }
printf 'data:     %s documents in, %s out (%s exact and %s near duplicates removed), %s tokens\n' \
  "$(metric datapipeline/local-corpus documents_in)" "$(metric datapipeline/local-corpus documents_out)" \
  "$(metric datapipeline/local-corpus exact_duplicates)" "$(metric datapipeline/local-corpus near_duplicates)" \
  "$(metric datapipeline/local-corpus tokens)"
printf 'pretrain: loss %.3f -> %.3f over %s steps (%.0f tokens/s on the CPU)\n' \
  "$(metric pretrainjob/local-llama initial_loss)" "$(metric pretrainjob/local-llama loss)" \
  "$(metric pretrainjob/local-llama steps)" "$(metric pretrainjob/local-llama tokens_per_second)"
printf 'finetune: held-out loss %.3f -> %.3f (perplexity %.1f)\n' \
  "$(metric finetune/local-llama-chat eval_loss_before)" "$(metric finetune/local-llama-chat eval_loss)" \
  "$(metric finetune/local-llama-chat eval_perplexity)"
printf 'quantize: int8 weights, perplexity %+.2f%% (gate: at most +10%%)\n' \
  "$(metric quantizejob/local-llama-chat-int8 perplexity_increase_percent)"

stage "serving: samples/local/inferenceservice.yaml, the int8 model behind the router"
key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
kubectl create secret generic local-chat-key -n "$ns" --from-literal=api-key="$key" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl delete -n "$ns" -f samples/local/inferenceservice.yaml --ignore-not-found --wait >/dev/null
kubectl apply -n "$ns" -f samples/local/inferenceservice.yaml
kubectl wait -n "$ns" --for=jsonpath='{.status.phase}'=Ready --timeout=600s misvc/local-chat
kubectl rollout status -n "$ns" deployment/local-chat-router --timeout=120s >/dev/null
kubectl port-forward -n "$ns" svc/local-chat 18080:80 >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18080/-/ready && break; sleep 0.2; done
# Greedy (temperature 0): the same answer each run, never an end token sampled first.
ask='{"model": "local-chat", "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": "What does json.dumps do?"}]}'
echo "without the key: HTTP $(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d "$ask" http://127.0.0.1:18080/v1/chat/completions)"
echo "with the key, the model trained minutes ago answers 'What does json.dumps do?':"
curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d "$ask" \
  http://127.0.0.1:18080/v1/chat/completions |
  python3 -c 'import json, sys; r = json.load(sys.stdin); print("  " + repr(r["choices"][0]["message"]["content"]), "(" + str(r["usage"]["completion_tokens"]) + " tokens)")'

# A client sending chat completions through the router the whole time: every status code
# goes to a file, so each rollout can say how many requests failed while weights moved.
codes=$(mktemp)
( body='{"model": "local-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}'
  while true; do
    curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $key" \
      -H 'Content-Type: application/json' -d "$body" http://127.0.0.1:18080/v1/chat/completions
    sleep 0.1
  done >>"$codes" 2>/dev/null ) &
load=$!
trap 'kill $forward $load 2>/dev/null || true' EXIT

# Waits until a rollout that is not of revision $1 (the stable one before it) ends, then
# prints its history and what the client saw meanwhile.
canary_ends() {
  local state
  for _ in $(seq 300); do
    state=$(kubectl get misvc local-chat -n "$ns" -o jsonpath='{.status.canary.revision} {.status.canary.stage}')
    case "$state" in
      "$1 "*) ;;
      *" Promoted" | *" RolledBack") break ;;
    esac
    sleep 2
  done
  kubectl get misvc local-chat -n "$ns" -o jsonpath='{range .status.canary.history[*]}  {.time}  {.reason}, weight {.weight}%: {.message}{"\n"}{end}'
  echo "=> $(kubectl get misvc local-chat -n "$ns" -o jsonpath='{.status.canary.stage}: {.status.canary.message}')"
  echo "the client meanwhile: $(sort "$codes" | uniq -c | awk '{printf "%s x HTTP %s, ", $1, $2}')"
  : >"$codes"
}

stage "canary: samples/local/canary.yaml, the unquantized model, analysed on real metrics"
stable=$(kubectl get misvc local-chat -n "$ns" -o jsonpath='{.status.stableRevision}')
: >"$codes"
kubectl apply -n "$ns" -f samples/local/canary.yaml
canary_ends "$stable"

stage "canary: a corrupt model (NaN output layer), rolled back by the analysis alone"
pv=$(kubectl get pvc modelsmith-artifacts -n "$ns" -o jsonpath='{.spec.volumeName}')
models=$(kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}')/models
rm -rf "$models/local-llama-chat-broken"
python -c 'import sys; from tests.workloads.canary_stack import broken_model; broken_model(*sys.argv[1:])' \
  "$models/local-llama-chat" "$models/local-llama-chat-broken"
chown -R 10001:10001 "$models/local-llama-chat-broken"  # as if a pod had uploaded it
stable=$(kubectl get misvc local-chat -n "$ns" -o jsonpath='{.status.stableRevision}')
: >"$codes"
kubectl patch misvc local-chat -n "$ns" --type merge -p \
  '{"spec": {"model": {"fromRef": null, "uri": "pvc://modelsmith-artifacts/models/local-llama-chat-broken"}}}'
canary_ends "$stable"
kill $load 2>/dev/null || true
kubectl get modelsmith -n "$ns"
kubectl get pods -n "$ns" -o wide
stage ""

echo
echo "== time per stage"
printf '%s\n' "${timings[@]}"
printf '%-58s %5d s\n' "total" "$SECONDS"
echo
echo "The GPU-sized chain (samples/chain.yaml) schedules onto kwok's fake GPU nodes, which"
echo "run nothing: apply it to see scheduling, not results."
echo "The cluster is still running:  eval \"\$(.venv/bin/modelsmith dev env)\"; kubectl get modelsmith -A"
echo "Stop it with:                  .venv/bin/modelsmith dev down   (--purge also deletes its data)"
