"""Site CAs and gateway certificates for the two mTLS hops (nginx chain and interlink link).

Preferred: `interlink.control.certs.init_site`, the same code `interlink certs init-site` uses. If it is
not importable (or fails), the harness makes equivalent certificates with the `openssl` CLI (EC P-256,
SAN URI spiffe://<trust-domain>/site/<site> + DNS names); those serve the nginx chain only, and the
interlink path is then skipped, since it must run on certificates made by interlink itself.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

TRUST_DOMAIN = "interlink"


@dataclass(frozen=True)
class SiteCerts:
    name: str
    dir: Path
    made_by: str  # "interlink" | "openssl"
    note: str = ""  # why the fallback was used

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "gateway.pem"

    @property
    def key(self) -> Path:
        return self.dir / "gateway.key"


def make_site(name: str, out_dir: Path, dns_names: tuple[str, ...]) -> SiteCerts:
    try:
        from interlink.control.certs import init_site

        init_site(name, out_dir, dns_names=dns_names, trust_domain=TRUST_DOMAIN)
        certs = SiteCerts(name, out_dir, "interlink")
        missing = [p.name for p in (certs.ca, certs.cert, certs.key) if not p.exists()]
        if missing:
            raise RuntimeError(f"init_site did not write {', '.join(missing)}")
        return certs
    except Exception as exc:  # ImportError while it is being written, or any failure of it
        note = f"interlink.control.certs.init_site unusable ({type(exc).__name__}: {exc})"
    _openssl_site(name, out_dir, dns_names)
    return SiteCerts(name, out_dir, "openssl", note)


def _openssl_site(name: str, out: Path, dns_names: tuple[str, ...]) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    for key in ("ca.key", "gateway.key"):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        (out / key).chmod(0o600)
    run(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "30", "-subj", f"/O=interlink/CN={name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.pem",
    )  # fmt: skip
    san = ",".join([f"URI:spiffe://{TRUST_DOMAIN}/site/{name}", *(f"DNS:{d}" for d in dns_names)])
    (out / "gateway.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={san}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    run("req", "-new", "-key", "gateway.key", "-subj", f"/O=interlink/CN={name} gateway", "-out", "gateway.csr")
    run(
        "x509", "-req", "-in", "gateway.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "30", "-extfile", "gateway.ext", "-out", "gateway.pem",
    )  # fmt: skip
