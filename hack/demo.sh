#!/usr/bin/env bash
# The main job: bring the local control plane up, install the CRDs, run the operator
# against it, take the sample manifests through their lifecycle and show the result.
# The cluster is left running for you to explore; `modelsmith dev down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
. .venv/bin/activate

ns=modelsmith-demo
modelsmith dev up
eval "$(modelsmith dev env)"

echo "== installing the CRDs"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=modelsmith
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

echo "== a manifest the API server refuses (workers: 0)"
if kubectl apply -n "$ns" -f samples/invalid-datapipeline.yaml; then
  echo "expected the invalid manifest to be rejected" >&2; exit 1
fi

log=$(mktemp -t modelsmith-operator.XXXXXX.log)
echo "== starting the operator (log: $log)"
modelsmith run --namespace "$ns" --metrics-port 0 --log-format text >"$log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null; wait $operator 2>/dev/null || true' EXIT

echo "== the claim the chain's artifacts live on (samples/storage.yaml)"
# The dev cluster has no provisioner yet: a hostPath volume reserved for the sample
# claim lets the real PV controller bind it. kwok's nodes never write to it.
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: $ns-artifacts}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: /tmp/modelsmith-pv/$ns-artifacts}
  claimRef: {namespace: $ns, name: modelsmith-artifacts}
YAML
kubectl get pvc -n "$ns" modelsmith-artifacts >/dev/null 2>&1 ||
  python3 -c 'import sys, yaml; d = yaml.safe_load(open("samples/storage.yaml")); d["spec"]["storageClassName"] = ""; print(yaml.safe_dump(d))' |
  kubectl apply -n "$ns" -f - >/dev/null
kubectl wait -n "$ns" --for=jsonpath='{.status.phase}'=Bound --timeout=60s pvc/modelsmith-artifacts

echo "== applying the chain: samples/chain.yaml first (it waits), then samples/datapipeline.yaml"
for f in samples/chain.yaml samples/datapipeline.yaml; do
  kubectl delete -n "$ns" -f "$f" --ignore-not-found --wait >/dev/null
done
kubectl apply -n "$ns" -f samples/chain.yaml
kubectl wait -n "$ns" --for=jsonpath='{.status.phase}'=Pending --timeout=60s \
  pretrainjob/tiny-llama finetune/tiny-llama-chat quantizejob/tiny-llama-chat-int4 >/dev/null
kubectl get pretrainjob,finetune,quantizejob -n "$ns" \
  -o custom-columns='KIND:.kind,NAME:.metadata.name,PHASE:.status.phase,WHY:.status.conditions[?(@.type=="Ready")].message'
kubectl apply -n "$ns" -f samples/datapipeline.yaml
for r in datapipeline/tiny-corpus pretrainjob/tiny-llama finetune/tiny-llama-chat \
         quantizejob/tiny-llama-chat-int4; do
  if ! kubectl wait -n "$ns" --for=condition=Succeeded --timeout=180s "$r"; then
    echo "$r did not succeed; operator log:" >&2; tail -50 "$log" >&2; exit 1
  fi
done

echo "== serving the quantized model: samples/inferenceservice.yaml (model.fromRef the QuantizeJob)"
kubectl delete -n "$ns" -f samples/inferenceservice.yaml --ignore-not-found --wait >/dev/null
kubectl apply -n "$ns" -f samples/inferenceservice.yaml
kubectl wait -n "$ns" --for=condition=Ready --timeout=120s misvc/tiny-chat
echo "== a new model version: it starts as canary and gets 5% once ready"
kubectl patch -n "$ns" misvc/tiny-chat --type=merge \
  -p '{"spec":{"model":{"fromRef":null,"uri":"pvc://modelsmith-artifacts/models/tiny-llama-chat"}}}'
kubectl wait -n "$ns" --for=jsonpath='{.status.canaryWeight}'=5 --timeout=120s misvc/tiny-chat
kubectl get misvc -n "$ns"
kubectl get configmap tiny-chat-routes -n "$ns" -o jsonpath='{.data.routes\.json}'; echo
echo "== no Prometheus in this demo, so the analysis would pause; promote by hand"
kubectl annotate -n "$ns" misvc/tiny-chat modelsmith.io/canary-decision=Promote --overwrite
kubectl wait -n "$ns" --for=jsonpath='{.status.canary.stage}'=Promoted --timeout=60s misvc/tiny-chat
kubectl get misvc tiny-chat -n "$ns" -o jsonpath='{.status.canary.history}' | python3 -m json.tool

echo "== result"
kubectl get modelsmith -n "$ns" -o wide
kubectl get jobs,deployments,services,pods -n "$ns" -o wide
kubectl get quantizejob tiny-llama-chat-int4 -n "$ns" -o jsonpath='{.status}' | python3 -m json.tool
echo
echo "The cluster is still running:  eval \"\$(.venv/bin/modelsmith dev env)\"; kubectl get nodes"
echo "Stop it with:                  .venv/bin/modelsmith dev down"
