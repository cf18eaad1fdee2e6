"""A real local Kubernetes control plane (etcd, kube-apiserver, controller manager,
scheduler) with kwok's fake GPU nodes, for development and integration tests."""
