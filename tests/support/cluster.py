"""Cluster-mode test parts: a private PostgreSQL the test can stop and start, a multi-node Ray
cluster on this host (`ray.cluster_utils.Cluster`, as Ray's own tests use), and six file
cameras made from real dataset images."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from tests.support import streams as streaming

# Failure detection tuned from Ray's defaults (a removed node's actor answered again only
# after about 3 minutes) to about two seconds.
RAY_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 4,
}


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free port (what scripts/test.sh starts), so a
    test may stop it and start it again."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
        if not bins:
            raise FileNotFoundError("no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)")
        self.bin = bins[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="gridwatch-cluster-pg."))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql+psycopg2://gridwatch@127.0.0.1:{self.port}/gridwatch"

    def _run(self, command: str) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True)
        else:
            subprocess.run(["sh", "-c", command], check=True, capture_output=True)

    def create(self) -> PrivatePostgres:
        self._run(f"{self.bin}/initdb -D {self.dir}/data -U gridwatch --auth=trust")
        self.start()
        self._run(f"{self.bin}/createdb -h 127.0.0.1 -p {self.port} -U gridwatch gridwatch")
        return self

    def start(self) -> None:
        self._run(f"{self.bin}/pg_ctl -D {self.dir}/data -o '-p {self.port} -k {self.dir} "
                  f"-c listen_addresses=127.0.0.1' -l {self.dir}/log -w start")

    def stop(self) -> None:
        self._run(f"{self.bin}/pg_ctl -D {self.dir}/data -m fast -w stop")

    def remove(self) -> None:
        try:
            self._run(f"{self.bin}/pg_ctl -D {self.dir}/data -m immediate stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def ray_cluster(worker_nodes: int = 2):
    """A head with no CPUs (the serving process's side) and `worker_nodes` 1-CPU nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": RAY_SYSTEM_CONFIG})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(worker_nodes)]
    cluster.wait_for_nodes()
    return cluster, nodes


CLIP_START = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


def six_cameras(folder: Path, detector, seconds: float = 40.0) -> list[dict]:
    """Six file cameras: a real street photo, a real overflowing bin (cut from
    garbage_overflow_cn) standing in a different stretch of each clip."""
    props = streaming.Props.load(detector)
    cameras = []
    for i in range(6):
        timeline = streaming.Timeline(props, duration=seconds, fps=4).add(
            streaming.Placement("bin", 150 + 10 * i, 3.0 + 2 * i, 22.0 + 2 * i, foot=(220 + 40 * i, 330)))
        video = streaming.write_video(folder / f"cam-{i}.mp4", timeline, creation_time=CLIP_START)
        cameras.append({
            "id": f"cam-{i}", "source": str(video), "division": "370202", "grid": "370202001001001",
            "sample_every": 0.5, "static_check_every": 2, "tiled_static_checks": False,
            "zones": [{"name": "street", "type": "bin_area", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
            "rules": [{"violation": "bin_overflow", "zone_types": ["bin_area"], "classes": ["fire hydrant"],
                       "min_score": 0.25, "dwell": 2}],
        })
    return cameras
