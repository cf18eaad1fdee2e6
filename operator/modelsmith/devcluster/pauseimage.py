"""The pod sandbox image, made on the machine: no image can be pulled here.

A pod's sandbox only has to hold its namespaces and reap zombies; Debian's static
catatonit does that (`-P`: pause mode). The image is written as an OCI archive in
Python (one layer, a config, a manifest) so that nothing but containerd's own `ctr`
is needed to load it, and its digest is the same on every machine with the same
catatonit.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

CATATONIT = Path("/usr/bin/catatonit")


def _blob(data: bytes) -> tuple[str, bytes]:
    return f"sha256:{hashlib.sha256(data).hexdigest()}", data


def _layer(binary: bytes) -> tuple[bytes, bytes]:
    """The layer's tar and its gzip, both reproducible (fixed mtimes, no gzip name)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        tar.addfile(info, io.BytesIO(binary))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as out:
        out.write(raw.getvalue())
    return raw.getvalue(), packed.getvalue()


def write_archive(target: Path, ref: str, binary: Path = CATATONIT) -> Path:
    """An OCI image-layout tar of ``ref`` whose entrypoint is ``/pause -P``."""
    uncompressed, layer = _layer(binary.read_bytes())
    layer_digest, _ = _blob(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause", "-P"], "User": "65535:65535"},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(uncompressed).hexdigest()}"],
            },
        },
        sort_keys=True,
    ).encode()
    config_digest, _ = _blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest, _ = _blob(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": ref},
                }
            ],
        }
    ).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": index,
        **{
            f"blobs/sha256/{d.split(':')[1]}": b
            for d, b in (
                (layer_digest, layer),
                (config_digest, config),
                (manifest_digest, manifest),
            )
        },
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return target
