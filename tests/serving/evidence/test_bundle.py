"""Case bundles: `gridwatch evidence bundle` and GET /v1/cases/{case}/bundle make a zip that
`gridwatch evidence verify --bundle` accepts and refuses once any byte is changed, and whose
README commands (sha256sum, openssl and a shell only) do the same check; a time-stamp from a
local RFC 3161 authority (`openssl ts`) travels with the signed head and verifies."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from serving.bundle import check_bundle
from serving.store.models import ChainHead
from tests.support.evidence import Chained, LocalTSA, run_cli


@pytest.fixture
def tsa(tmp_path: Path):
    authority = LocalTSA(tmp_path / "tsa")
    yield authority
    authority.stop()


def filled(store: Chained, make_event) -> str:
    number = store.cases.ingest(*make_event("opened", end_s=60)).case_number
    store.cases.ingest(*make_event("opened", event_id="ev-2", box=(600, 600, 700, 700), image=2))  # another case
    store.cases.review(number, "confirm", reviewer="ana")
    return number


def bundle_of(store: Chained, number: str, tmp_path: Path) -> Path:
    out = tmp_path / "out" / f"{number}.zip"
    code, text = run_cli(["evidence", "bundle", number, "--out", str(out), "--data-dir", str(store.data_dir)])
    assert code == 0, text
    return out


def readme_commands(folder: Path) -> subprocess.CompletedProcess:
    """The README's own commands, as a person would paste them, in the unzipped folder."""
    readme = (folder / "README.txt").read_text(encoding="utf-8")
    script = re.search(r"---- commands ----\n(.*?)---- end ----", readme, re.S).group(1)
    return subprocess.run(["bash", "-c", script], cwd=folder, capture_output=True, text=True)


def unzip(data: bytes, where: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(where)
        top = archive.namelist()[0].split("/")[0]
    return where / top


def altered(data: bytes, name_part: str) -> bytes:
    """The zip with one byte of the first member whose name contains `name_part` changed."""
    out = io.BytesIO()
    done = False
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = bytearray(src.read(info))
            if not done and name_part in info.filename:
                body[len(body) // 2] ^= 0x01
                done = True
            dst.writestr(info, bytes(body))
    assert done
    return out.getvalue()


def test_a_bundle_checks_with_sha256sum_and_openssl_alone(tmp_path: Path, make_event) -> None:
    store = Chained(tmp_path / "data")
    number = filled(store, make_event)
    path = bundle_of(store, number, tmp_path)
    names = zipfile.ZipFile(path).namelist()
    assert {f"{number}/{n}" for n in ("case.json", "head.txt", "head.sig", "public.pem", "README.txt",
                                      "SHA256SUMS", "SHA256SUMS.sig")} <= set(names)
    assert sum(n.startswith(f"{number}/evidence/") for n in names) == 3  # original, annotated, crop
    assert any(n.startswith(f"{number}/chain/") for n in names)
    code, text = run_cli(["evidence", "verify", "--bundle", str(path), "--data-dir", str(store.data_dir)])
    assert code == 0 and "bundle intact" in text, text
    folder = unzip(path.read_bytes(), tmp_path / "intact")
    done = readme_commands(folder)
    assert done.returncode == 0 and done.stdout.strip().endswith("ALL CHECKS PASSED"), done.stdout + done.stderr
    readme = (folder / "README.txt").read_text(encoding="utf-8")
    assert "中文" in readme and "English" in readme
    store.db.close()


def test_a_bundle_never_replaces_a_file(tmp_path: Path, make_event) -> None:
    """--out naming the database or the signing key once overwrote it (and exited 0)."""
    from serving.chain import KEY_NAME

    store = Chained(tmp_path / "data")
    number = filled(store, make_event)
    for existing in (store.data_dir / "gridwatch.db", store.data_dir / KEY_NAME):
        before = existing.read_bytes()
        code, _ = run_cli(["evidence", "bundle", number, "--out", str(existing), "--data-dir", str(store.data_dir)])
        assert code == 1 and existing.read_bytes() == before
    code, text = run_cli(["evidence", "verify", "--data-dir", str(store.data_dir)])
    assert code == 0, text
    store.db.close()


@pytest.mark.parametrize("member", ["/evidence/original", "/chain/", "case.json", "head.txt", "SHA256SUMS"])
def test_an_altered_bundle_is_refused(tmp_path: Path, make_event, member: str) -> None:
    store = Chained(tmp_path / "data")
    number = filled(store, make_event)
    path = bundle_of(store, number, tmp_path)
    changed = tmp_path / "changed.zip"
    changed.write_bytes(altered(path.read_bytes(), member))
    code, text = run_cli(["evidence", "verify", "--bundle", str(changed), "--data-dir", str(store.data_dir)])
    assert code == 1 and f"FAIL {number}:" in text, text
    # The README's commands refuse it too.
    done = readme_commands(unzip(changed.read_bytes(), tmp_path / "changed"))
    assert done.returncode != 0 and "ALL CHECKS PASSED" not in done.stdout
    store.db.close()


def test_a_bundle_signed_with_another_key_is_refused_here(tmp_path: Path, make_event) -> None:
    """A forger who rebuilds a whole bundle with a key of their own passes the bundle's own
    checks, but not against this instance's key."""
    store = Chained(tmp_path / "data")
    number = filled(store, make_event)
    other = Chained(tmp_path / "other")
    forged = bundle_of(other, filled(other, make_event), tmp_path)
    assert check_bundle(forged.read_bytes()).ok
    code, text = run_cli(["evidence", "verify", "--bundle", str(forged), "--data-dir", str(store.data_dir)])
    assert code == 1 and "not this instance's" in text
    assert check_bundle(b"not a zip").problems
    store.db.close()
    other.db.close()
    assert number


def test_the_signed_head_is_time_stamped_by_a_local_tsa(tmp_path: Path, make_event, tsa: LocalTSA) -> None:
    store = Chained(tmp_path / "data", timestamp_url=tsa.url)
    number = filled(store, make_event)
    head = store.signer.sign_head()
    assert head.timestamp_token and tsa.requests == 1
    folder = unzip(bundle_of(store, number, tmp_path).read_bytes(), tmp_path / "stamped")
    assert (folder / "head.tsr").is_file() and "openssl ts -verify" in (folder / "README.txt").read_text()
    done = subprocess.run(["openssl", "ts", "-verify", "-data", "head.txt", "-in", "head.tsr",
                           "-CAfile", str(tsa.ca)], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr
    # Another head's text does not verify under this token.
    (folder / "head.txt").write_text((folder / "head.txt").read_text().replace("seq:", "seq: 1"))
    done = subprocess.run(["openssl", "ts", "-verify", "-data", "head.txt", "-in", "head.tsr",
                           "-CAfile", str(tsa.ca)], cwd=folder, capture_output=True, text=True)
    assert done.returncode != 0
    assert store.verify()[0] == 0
    # A token that is not over its head (one taken for other history) is named.
    with store.db.transaction() as session:
        stamped = session.get(ChainHead, head.id)
        stamped.timestamp_token = stamped.timestamp_token.replace(
            hashlib.sha256(stamped.text.encode()).digest(), b"\0" * 32)
    code, out = store.verify()
    assert code == 1 and "time-stamp token is not over this head" in out
    store.db.close()


def test_an_unreachable_tsa_leaves_the_head_signed(tmp_path: Path, make_event) -> None:
    store = Chained(tmp_path / "data", timestamp_url="http://127.0.0.1:9/tsa")
    filled(store, make_event)
    head = store.signer.sign_head()
    assert head is not None and head.timestamp_token is None and store.signer.timestamp_failures == 1
    store.db.close()


def test_the_bundle_route_answers_the_case_system_and_refuses_the_unknown(run_service, dataset_images) -> None:
    from tests.support.service import event_json, push

    server = run_service(auto_confirm={"bin_overflow": 0.5})
    with server.client(server.key("camera")) as http:
        number = push(http, event_json(), dataset_images[0]).json()["case_number"]
    with server.client(server.key("case_system")) as http:
        answer = http.get(f"/v1/cases/{number}/bundle")
        assert answer.status_code == 200, answer.text
        assert check_bundle(answer.content, server.service.signer.key.public_key()).ok
        assert http.get("/v1/cases/GW20261123-NOPE-000009/bundle").status_code == 404
        assert http.get(f"/v1/cases/{number}/bundle", params={"originals": "maybe"}).status_code == 422
