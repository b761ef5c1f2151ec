"""A case bundle: one zip a case system (or a court) checks without gridwatch.

It holds the case JSON, every evidence file that may leave (masked copies in place of sealed
originals unless asked otherwise), the stretch of the evidence chain from the case's first
entry to the first signed head after its last one, that head with its signature (and RFC 3161
token), the instance's public key, `SHA256SUMS` over all of it signed with the same key, and a
README in Chinese and English whose commands need only `sha256sum`, `openssl` and a shell.
`check_bundle` is the same check in Python (`gridwatch evidence verify --bundle F.zip`).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from serving.chain import (
    TOMBSTONE,
    ChainSigner,
    covering_head,
    parse_text,
    public_pem,
    removed_by_tombstones,
    text_of,
)
from serving.store.db import Database
from serving.store.models import ChainEntry

SUMS = "SHA256SUMS"
SIGNED_FILES = ("head.txt", "head.sig", "public.pem", SUMS, SUMS + ".sig", "case.json", "README.txt")


class BundleError(ValueError):
    """No bundle can be made (no such case, nothing chained); `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def _sealed(entries: list[ChainEntry]) -> set[int]:
    """Chain positions of originals that have a masked copy: those stay in the service."""
    sealed = set()
    for entry in entries:
        if entry.kind == "masked":
            of = json.loads(entry.detail).get("of")
            if of is not None:
                sealed.add(int(of))
    return sealed


def build_bundle(db: Database, evidence_root: Path, signer: ChainSigner, case_number: str,
                 case_json: dict[str, Any], *, originals: bool = False) -> bytes:
    """The zip's bytes. `originals`: include sealed originals too (an admin's export)."""
    root = Path(evidence_root).resolve()
    with db.sessions() as session:
        own = list(session.scalars(select(ChainEntry).where(ChainEntry.case_number == case_number)
                                   .order_by(ChainEntry.seq)))
        if not own:
            raise BundleError(f"case {case_number} has nothing in the evidence chain")
        head = covering_head(session, own[-1].seq)
    if head is None:
        signer.sign_head()
        with db.sessions() as session:
            head = covering_head(session, own[-1].seq)
    with db.sessions() as session:
        segment = list(session.scalars(select(ChainEntry).where(ChainEntry.seq >= own[0].seq,
                                                                ChainEntry.seq <= head.seq)
                                       .order_by(ChainEntry.seq)))
        removed = removed_by_tombstones(session.scalars(select(ChainEntry).where(ChainEntry.kind == TOMBSTONE)))
    sealed = set() if originals else _sealed(own)
    files: dict[str, bytes] = {"case.json": json.dumps(case_json, ensure_ascii=False, indent=2).encode("utf-8")}
    for entry in own:
        if not entry.path or entry.seq in removed or entry.seq in sealed:
            continue
        path = (root / entry.path).resolve()
        if path.is_relative_to(root) and path.is_file():
            files[f"evidence/{PurePosixPath(entry.path).name}"] = path.read_bytes()
    for entry in segment:
        files[f"chain/{entry.seq:010d}.txt"] = text_of(entry)
    head_bytes = head.text.encode("utf-8")
    files["head.txt"] = head_bytes
    files["head.sig"] = bytes.fromhex(head.signature)
    if head.timestamp_token:
        files["head.tsr"] = head.timestamp_token
    files["public.pem"] = public_pem(signer.key)
    files["README.txt"] = readme(case_number, timestamped=bool(head.timestamp_token)).encode("utf-8")
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items()))
    files[SUMS] = sums.encode("utf-8")
    files[SUMS + ".sig"] = signer.key.sign(files[SUMS])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(f"{case_number}/{name}", files[name])
    return out.getvalue()


@dataclass
class BundleReport:
    case_number: str = ""
    problems: list[str] = field(default_factory=list)
    files: int = 0
    entries: int = 0
    sealed: int = 0
    removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_bundle(data: bytes, expected_key: Ed25519PublicKey | None = None) -> BundleReport:
    """Everything in the README, in Python: signatures, every file's hash, the chain's links up
    to the signed head, each evidence file in the chain, each case JSON hash in the chain."""
    report = BundleReport()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = [n for n in archive.namelist() if not n.endswith("/")]
        prefix = names[0].split("/", 1)[0] + "/" if names else ""
        files = {n[len(prefix):]: archive.read(n) for n in names if n.startswith(prefix)}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        report.problems.append(f"not a readable zip: {exc}")
        return report
    report.case_number = prefix.rstrip("/")
    missing = [n for n in SIGNED_FILES if n not in files]
    if missing:
        report.problems.append(f"missing from the bundle: {', '.join(missing)}")
        return report
    try:
        public = serialization.load_pem_public_key(files["public.pem"])
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("not an Ed25519 key")
    except ValueError as exc:
        report.problems.append(f"public.pem: {exc}")
        return report
    if expected_key is not None and public_pem(expected_key) != public_pem(public):
        report.problems.append("signed with a key that is not this instance's")
    for name, sig in ((SUMS, SUMS + ".sig"), ("head.txt", "head.sig")):
        try:
            public.verify(files[sig], files[name])
        except InvalidSignature:
            report.problems.append(f"{sig}: the signature over {name} does not verify")
    listed: dict[str, str] = {}
    for line in files[SUMS].decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, content in files.items():
        if name in (SUMS, SUMS + ".sig"):
            continue
        if name not in listed:
            report.problems.append(f"{name}: not listed in {SUMS}")
        elif hashlib.sha256(content).hexdigest() != listed[name]:
            report.problems.append(f"{name}: changed (its hash is not the one in {SUMS})")
    for name in listed:
        if name not in files:
            report.problems.append(f"{name}: listed in {SUMS} but missing")
    _check_chain(files, report)
    return report


def _check_chain(files: dict[str, bytes], report: BundleReport) -> None:
    chain = sorted(n for n in files if n.startswith("chain/"))
    report.entries = len(chain)
    if not chain:
        report.problems.append("the bundle holds no chain entries")
        return
    entries = []
    prev = parse_text(files[chain[0]]).get("prev")
    for name in chain:
        fields = parse_text(files[name])
        if fields.get("prev") != prev:
            report.problems.append(f"{name}: does not follow the entry before it")
        prev = hashlib.sha256(files[name]).hexdigest()
        entries.append((name, fields))
    head = parse_text(files["head.txt"])
    if head.get("hash") != prev or head.get("seq") != entries[-1][1].get("seq"):
        report.problems.append("the chain does not end at the signed head")
    own = [f for _, f in entries if f.get("case") == report.case_number]
    hashes = {f.get("sha256") for f in own}
    by_name = {PurePosixPath(f.get("path", "")).name: f for f in own if f.get("path")}
    removed = set()
    sealed = set()
    for f in own:
        detail = json.loads(f.get("detail") or "{}")
        if f.get("kind") == TOMBSTONE:
            removed.update(str(s) for s in detail.get("removed", []))
        if f.get("kind") == "masked" and detail.get("of") is not None:
            sealed.add(str(detail["of"]))
    for name in (n for n in files if n.startswith("evidence/")):
        report.files += 1
        entry = by_name.get(PurePosixPath(name).name)
        if entry is None or entry.get("sha256") != hashlib.sha256(files[name]).hexdigest():
            report.problems.append(f"{name}: not the file its chain entry holds")
    report.sealed = len(sealed)
    report.removed = len(removed)
    try:
        case = json.loads(files["case.json"])
        for item in case.get("evidence", []):
            if item.get("sha256") not in hashes:
                report.problems.append(f"case.json: evidence {item.get('id')} is not in the chain")
    except (ValueError, AttributeError) as exc:
        report.problems.append(f"case.json: {exc}")
    if "head.tsr" in files and hashlib.sha256(files["head.txt"]).digest() not in files["head.tsr"]:
        report.problems.append("head.tsr: the time-stamp is not over this head")


def readme(case_number: str, *, timestamped: bool) -> str:
    tsa = ("\n# 5. 时间戳 / time-stamp (RFC 3161), with the time-stamping authority's CA certificate:\n"
           "openssl ts -verify -data head.txt -in head.tsr -CAfile TSA-CA.pem\n") if timestamped else ""
    return f"""案件证据包 {case_number} / Evidence bundle for case {case_number}

中文
----
本证据包由 gridwatch 生成。其中：case.json 为案件记录；evidence/ 为证据文件（含人像遮挡的照片；
未遮挡的原图封存在系统内，仅管理员可经登记理由后查看）；chain/ 为证据哈希链中与本案相关的一段，
每个条目记录前一条目的哈希、文件的 SHA-256、案件编号、类别和时间；head.txt 为链头，head.sig 为
本系统 Ed25519 私钥对链头的签名；public.pem 为本系统公钥；SHA256SUMS 列出本包所有文件的哈希，
SHA256SUMS.sig 为其签名。请先将 public.pem 的指纹（第 0 步输出）与城市存档的指纹
（`gridwatch evidence key` 输出）核对，然后在解压后的目录中运行下列命令；每一步都必须成功，
最后一行输出 "ALL CHECKS PASSED"。任何一个字节被改动，都会有一步失败。

English
-------
Made by gridwatch. case.json is the case record; evidence/ the evidence files (photos with
people masked; the unmasked originals stay sealed in the service, readable only by an admin
who records a reason); chain/ the stretch of the evidence hash chain that holds this case:
each entry names the hash of the entry before it, the file's SHA-256, the case, kind and time;
head.txt is the chain head, head.sig the service's Ed25519 signature over it; public.pem the
service's public key; SHA256SUMS the hash of every file here and SHA256SUMS.sig its signature.
First compare public.pem's fingerprint (step 0) with the one the city recorded from
`gridwatch evidence key`, then run the commands below in the unzipped folder: each step must
succeed and the last line printed is "ALL CHECKS PASSED". Any changed byte fails a step.

---- commands ----
set -e
# 0. 公钥指纹 / the public key's fingerprint
openssl pkey -pubin -in public.pem -outform DER | sha256sum
# 1. 文件清单签名 / the signed list of files
openssl pkeyutl -verify -pubin -inkey public.pem -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig
# 2. 每个文件的哈希 / every file's hash
sha256sum -c --quiet SHA256SUMS
# 3. 链头签名 / the signed chain head
openssl pkeyutl -verify -pubin -inkey public.pem -rawin -in head.txt -sigfile head.sig
# 4. 哈希链逐条相连，止于签名链头 / each chain entry links to the one before, up to the signed head
prev=$(sed -n 's/^prev: //p' "$(ls chain/*.txt | head -n 1)")
for f in chain/*.txt; do
  test "$(sed -n 's/^prev: //p' "$f")" = "$prev" || {{ echo "BROKEN CHAIN AT $f"; exit 1; }}
  prev=$(sha256sum "$f" | cut -d' ' -f1)
done
grep -qx "hash: $prev" head.txt || {{ echo "CHAIN DOES NOT END AT THE SIGNED HEAD"; exit 1; }}
# 每个证据文件的哈希都在链中 / every evidence file's hash is in the chain
for f in evidence/*; do
  h=$(sha256sum "$f" | cut -d' ' -f1)
  grep -qx "sha256: $h" chain/*.txt || {{ echo "NOT IN THE CHAIN: $f"; exit 1; }}
done
echo "ALL CHECKS PASSED"
---- end ----
{tsa}"""
