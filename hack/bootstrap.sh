#!/usr/bin/env bash
# Make this checkout ready to run: a virtualenv with the operator and dev tools, and the
# local control plane's binaries. Idempotent and cheap when nothing changed: pip wheels
# and Go builds are cached outside the repository (~/.cache/uv, ~/go/pkg/mod,
# ~/.cache/go-build, ~/.cache/modelsmith), so fresh clones reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The dev cluster's real node and the image builds use Debian's container tools:
# containerd and runc run the pods, the CNI plugins wire them, socat bridges the API and
# the registry into the node's network namespace, mmdebstrap and buildah build images.
debs="containerd runc containernetworking-plugins iptables nftables socat catatonit mmdebstrap buildah skopeo uidmap"
missing=$(for deb in $debs; do dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || echo "$deb"; done)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages:" $missing
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "bootstrap: the real node needs these Debian packages (as root: apt-get install" \
      $missing"); the control plane and kwok nodes work without them" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.modelsmith-deps
want=$(cat pyproject.toml images/runtime/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The install below needs ~7 GiB in .venv plus pip's downloads. Out of space, pip dies
  # half-way with a bare ENOSPC and leaves a broken venv; say so up front instead.
  need_kib=$((8 * 1024 * 1024))
  free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "$free_kib" -lt "$need_kib" ] && ! compgen -G ".venv/lib/python3*/site-packages/torch" >/dev/null; then
    echo "bootstrap: $((free_kib / 1024)) MiB free on the filesystem of $PWD;" \
      "installing the runtime (torch with its CUDA wheels) needs about 8 GiB." \
      "Remove old clones' .venv directories or ~/.cache/uv, then run again." >&2
    exit 1
  fi
  # uv installs what pip would, but from its cache (~/.cache/uv) by hard links: a fresh
  # clone's 7 GB venv takes seconds and no extra disk when the cache is warm, where
  # pip unpacked every wheel again (minutes). It downloads in parallel when cold.
  .venv/bin/python -m pip install --quiet --upgrade pip "setuptools>=77" wheel "uv==0.13.9"
  uv() { .venv/bin/uv pip install --quiet --python .venv/bin/python "$@"; }
  # The workload runtime with every extra: torch is PyPI's CUDA build (about 3 GB with
  # its nvidia-* wheels; it runs on the CPU here).
  uv -e ".[dev]" -e "images/runtime[all]"
  # DeepSpeed's sdist builds against the torch just installed: without build isolation,
  # or it would fetch torch a second time into a throwaway build environment. The
  # built wheel lands in uv's cache, so later fresh clones skip the build.
  uv --no-build-isolation -e "images/runtime[deepspeed]"
  echo "$want" > "$stamp"
fi
.venv/bin/modelsmith dev build
