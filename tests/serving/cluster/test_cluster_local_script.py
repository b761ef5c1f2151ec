"""`scripts/cluster-local.sh`: two Ray nodes on this host with their own temp dirs, ports and
token; one node stopped alone (the other runs on), then the rest."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.service import wait_for

pytest.importorskip("ray", reason="cluster mode needs Ray: pip install 'gridwatch[cluster]'")
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cluster-local.sh"


@pytest.fixture
def short_dir():
    """Ray's socket paths under a node's temp dir must stay short: not under pytest's tmp_path."""
    folder = Path(tempfile.mkdtemp(prefix="gwc-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_two_nodes_on_one_host_and_one_stopped_alone(short_dir: Path) -> None:
    tmp_path = short_dir
    env = {**os.environ, "CLUSTER_DIR": str(tmp_path / "cluster"), "PORT_BASE": str(random.randrange(20000, 30000))}
    env.pop("RAY_ADDRESS", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)

    def active_nodes() -> int:
        status = run("status").stdout
        if "Active:" not in status:  # the autoscaler has not reported yet
            return -1
        active = status.split("Active:")[1].split("Pending:")[0]
        return len(re.findall(r"node_[0-9a-f]+", active))

    try:
        up = run("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "cluster up at 127.0.0.1:" in up.stdout
        # `ray status` is the autoscaler's view, a few seconds behind the nodes' own registration.
        wait_for(lambda: active_nodes() == 2, timeout=60, interval=2)
        token = tmp_path / "cluster" / "auth_token"
        assert token.stat().st_mode & 0o077 == 0 and len(token.read_text().strip()) == 64  # the operator's only
        assert (tmp_path / "cluster" / "head" / "tmp").is_dir() and (tmp_path / "cluster" / "node1" / "tmp").is_dir()

        node_group = int((tmp_path / "cluster" / "node1" / "pgid").read_text())
        assert run("stop-node", "node1").returncode == 0

        def group_gone() -> bool:
            try:
                os.killpg(node_group, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(group_gone, timeout=30)  # that node's processes are gone...
        wait_for(lambda: active_nodes() == 1, timeout=60, interval=2)  # ...and the head runs on
    finally:
        assert run("down").returncode == 0
    assert not list((tmp_path / "cluster").glob("*/pgid"))


def test_a_cluster_dir_too_long_for_rays_sockets_is_refused_up_front(tmp_path: Path) -> None:
    env = {**os.environ, "CLUSTER_DIR": str(tmp_path / ("x" * 60))}
    result = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "too long for Ray's socket paths" in result.stderr
