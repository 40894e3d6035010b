"""Development certificates for the gateway's TLS and mTLS modes (`make certs`), with openssl.

    .venv/bin/python scripts/dev_certs.py [DIR]        # default run/certs

Writes ca.pem/ca.key (a throw-away CA), gateway.pem/gateway.key (server certificate for
localhost, 127.0.0.1 and the Kubernetes Service name `envoy`) and client.pem/client.key (a
client certificate for mTLS), all signed by that CA, valid 30 days; keys are mode 0600.
Then e.g.

    MEDSEG_GATEWAY_TLS=mtls MEDSEG_GATEWAY_CERT=run/certs/gateway.pem \\
    MEDSEG_GATEWAY_KEY=run/certs/gateway.key MEDSEG_GATEWAY_CA=run/certs/ca.pem \\
    MEDSEG_TLS_CERT=run/certs/client.pem MEDSEG_TLS_KEY=run/certs/client.key make up

Real certificates: point the same variables at the hospital CA's files instead (the gateway
certificate must name the host clients dial; MEDSEG_GATEWAY_CA is the CA that signs client
certificates in mtls mode). Never use these development files outside a test machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

DAYS = "30"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _signed(folder: Path, name: str, subject: str, extensions: str) -> None:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-subj", subject, "-out", str(csr))
    with tempfile.NamedTemporaryFile("w", suffix=".ext", delete=False) as ext:
        ext.write(extensions)
    try:
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(folder / "ca.pem"), "-CAkey", str(folder / "ca.key"),
                 "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", ext.name, "-out", str(cert))
    finally:
        os.unlink(ext.name)
    csr.unlink()
    key.chmod(0o600)


def make_certs(folder: Path | str, ca_name: str = "medseg development CA") -> Path:
    """CA, gateway and client certificates in `folder` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"), "-days", DAYS,
             "-subj", f"/CN={ca_name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (folder / "ca.key").chmod(0o600)
    _signed(folder, "gateway", "/CN=medseg gateway",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:envoy\n")
    _signed(folder, "client", "/CN=medseg client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    return folder


if __name__ == "__main__":
    out = make_certs(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "run" / "certs")
    print(f"development CA and certificates in {out}")
