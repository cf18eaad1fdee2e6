"""Certificates and keys for the local control plane.

The API server runs with TLS, client-certificate authentication and RBAC exactly as a
real cluster does; only the CA is ours and throwaway. Service-account tokens are signed
with a key of their own so `kubectl create token` and RBAC checks on service accounts
behave as on any cluster.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
ADMIN_USER = "modelsmith-admin"

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class PKIPaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.root / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL
            if isinstance(key, rsa.RSAPrivateKey)
            else serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server_names or server_ips:
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def generate(root: Path) -> PKIPaths:
    """Write a fresh CA, API-server serving cert, admin client cert and SA key pair."""
    root.mkdir(parents=True, exist_ok=True)
    paths = PKIPaths(root)
    now = dt.datetime.now(dt.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("modelsmith-dev-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(paths.ca_key, ca_key)
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        ca_key,
        ca_name,
        _name("kube-apiserver"),
        server_key,
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", KUBERNETES_SERVICE_IP),
    )
    _write_key(paths.apiserver_key, server_key)
    paths.apiserver_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = _issue(
        ca_key, ca_name, _name(ADMIN_USER, "system:masters"), admin_key, client=True
    )
    _write_key(paths.admin_key, admin_key)
    paths.admin_cert.write_bytes(admin_cert.public_bytes(serialization.Encoding.PEM))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(paths.sa_key, sa_key)
    paths.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


_CA_FILES = ("ca_cert", "ca_key", "apiserver_cert", "apiserver_key", "admin_cert", "admin_key")


def complete(paths: PKIPaths) -> bool:
    """Every file `generate` writes is there (a crash half-way through means start over)."""
    files = [getattr(paths, name) for name in _CA_FILES] + [paths.sa_key, paths.sa_pub]
    return all(f.is_file() and f.stat().st_size > 0 for f in files)


def client_paths(paths: PKIPaths, name: str) -> tuple[Path, Path]:
    """Where `client_pair` keeps ``name``'s certificate and key (a config can name them
    before they exist)."""
    return paths.root / f"{name}.crt", paths.root / f"{name}.key"


def client_pair(paths: PKIPaths, name: str, cn: str, org: str | None = None) -> tuple[Path, Path]:
    """A client certificate signed by the cluster's CA, made once and kept with the CA.

    The real node's kubelet is ``system:node:<node>`` in ``system:nodes`` (the Node
    authorizer's identity), kube-proxy ``system:kube-proxy`` (bound to
    system:node-proxier by default): static certificates, since the CA key is ours and
    TLS bootstrap would need more controller-manager flags for nothing.
    """
    cert, key = client_paths(paths, name)
    if cert.is_file() and key.is_file():
        existing = x509.load_pem_x509_certificate(cert.read_bytes())
        if existing.subject == _name(cn, org):
            return cert, key
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{paths.ca_key} is not the EC key `generate` writes")
    ca_name = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()).subject
    client_key = ec.generate_private_key(ec.SECP256R1())
    issued = _issue(ca_key, ca_name, _name(cn, org), client_key, client=True)
    _write_key(key, client_key)
    cert.write_bytes(issued.public_bytes(serialization.Encoding.PEM))
    return cert, key


def kubeconfig(
    cluster: str, server: str, ca: Path, *, user: str, cert: Path, key: Path, embed: bool
) -> dict[str, Any]:
    """A one-context kubeconfig. ``embed`` puts the certificates in it (a file users copy
    around); otherwise it names their paths (the node's components, which renew nothing)."""

    def ref(field: str, path: Path) -> dict[str, str]:
        if embed:
            return {f"{field}-data": base64.b64encode(path.read_bytes()).decode()}
        return {field: str(path)}

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, **ref("certificate-authority", ca)}}
        ],
        "users": [
            {"name": user, "user": {**ref("client-certificate", cert), **ref("client-key", key)}}
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
