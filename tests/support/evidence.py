"""A case store with the evidence chain on, laid out as `gridwatch serve` lays out its data
dir, so `gridwatch evidence` commands run against it; a local RFC 3161 time-stamping
authority made with `openssl ts`, answering on loopback."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy import select

from detector.taxonomy import load_taxonomy
from serving.cases import CasePolicy, CaseService
from serving.chain import KEY_NAME, MIRROR_NAME, ChainSigner, EvidenceChain, load_or_create_key
from serving.cli import main
from serving.evidence import EvidenceStore
from serving.privacy import PrivacyPolicy
from serving.store.db import Database
from serving.store.models import Evidence


class Chained:
    """A case store laid out as `gridwatch serve` lays out its data dir, with the chain on."""

    def __init__(self, data_dir: Path, *, privacy: PrivacyPolicy | None = None, timestamp_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.db = Database(f"sqlite:///{data_dir / 'gridwatch.db'}")
        self.store = EvidenceStore(data_dir / "evidence")
        self.chain = EvidenceChain(data_dir / MIRROR_NAME)
        self.chain.install(self.db)
        self.cases = CaseService(self.db, self.store, load_taxonomy(), CasePolicy(),
                                 model_version="test-1", public_url="http://gw.test", privacy=privacy,
                                 chain=self.chain)
        self.key = load_or_create_key(data_dir / KEY_NAME)
        self.signer = ChainSigner(self.db, self.key, self.cases.instance, timestamp_url=timestamp_url)

    def verify(self, *cases: str) -> tuple[int, str]:
        return run_cli(["evidence", "verify", *cases, "--data-dir", str(self.data_dir)])

    def evidence(self, case_number: str, kind: str = "original") -> Path:
        with self.db.sessions() as session:
            rows = session.scalars(select(Evidence)).all()
            item = next(e for e in rows if e.case.case_number == case_number and e.kind == kind)
        return self.store.resolve(item.path)




def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


TSA_CONFIG = """
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
certs = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class LocalTSA:
    """An RFC 3161 time-stamping authority on 127.0.0.1: a CA, a TSA certificate with
    extendedKeyUsage timeStamping, and `openssl ts -reply` answering each query."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                 "-subj", "/CN=gridwatch test TSA CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
        _openssl("req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=gridwatch test TSA", cwd=folder)
        (folder / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                        "extendedKeyUsage=critical,timeStamping\n")
        _openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "tsa.crt", "-days", "2", "-extfile", "ext.cnf", cwd=folder)
        (folder / "serial").write_text("01\n")
        (folder / "tsa.cnf").write_text(TSA_CONFIG.format(dir=folder))
        self.ca = folder / "ca.crt"
        self.requests = 0
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_error(415)
                    return
                tsa.requests += 1
                with tempfile.TemporaryDirectory() as work:
                    query, reply = Path(work) / "q.tsq", Path(work) / "r.tsr"
                    query.write_bytes(body)
                    done = subprocess.run(["openssl", "ts", "-reply", "-config", str(folder / "tsa.cnf"),
                                           "-queryfile", str(query), "-out", str(reply)], capture_output=True)
                    if done.returncode != 0:
                        self.send_error(500, done.stderr.decode()[:200])
                        return
                    answer = reply.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsa"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
