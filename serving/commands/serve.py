"""`gridwatch serve`: streams, detector, cases, API and delivery in one process."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the service: cameras, detection, cases, API and webhook delivery",
        description="Run gridwatch as a service. With no --config it starts on embedded defaults: "
        "a SQLite database and evidence folder under the data directory, the shipped model, no "
        "cameras (add them through the API), and an admin key printed once (or taken from "
        "GRIDWATCH_ADMIN_KEY).",
    )
    parser.add_argument("--config", type=Path, help="YAML with a `settings:` section and/or `cameras:`")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--data-dir", type=Path, help="database and evidence folder (default ./gridwatch-data)")
    parser.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    parser.add_argument("--cluster", metavar="ADDRESS", dest="ray_address",
                        help="run the cameras on the Ray cluster at ADDRESS ('auto': the one `ray start` made "
                        "here; also GRIDWATCH_RAY_ADDRESS); cases, API and delivery stay in this process; "
                        "needs PostgreSQL and the cluster extra")
    parser.set_defaults(func=run)


def file_cameras(config: Path | None, taxonomy) -> list:  # noqa: ANN001
    """The config file's cameras; a malformed entry is reported and skipped, the rest run."""
    if config is None:
        return []
    import yaml

    from serving.cameras import CameraConfigError, parse_cameras

    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not data.get("cameras"):
        return []
    try:
        return list(parse_cameras(data, config.resolve().parent, str(config), taxonomy).cameras)
    except CameraConfigError as whole:
        if not isinstance(data["cameras"], list):
            raise
        print(f"gridwatch serve: {whole}", file=sys.stderr)
    cameras = []
    for entry in data["cameras"]:
        try:
            cameras.extend(parse_cameras({"cameras": [entry]}, config.resolve().parent, str(config), taxonomy).cameras)
        except CameraConfigError:
            name = entry.get("id", "?") if isinstance(entry, dict) else "?"
            print(f"gridwatch serve: camera {name!r} skipped (see the error above)", file=sys.stderr)
    return cameras


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads that allocate their own arenas (up to 8 per core); a service that
    decodes frames on many threads for months fragments them and its resident memory creeps.
    The soak (20 cameras, 6 simulated hours) grew half as fast with 2 arenas. Elsewhere than
    glibc there is no such call, and nothing to do."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        return


# Dirty pages go back to the system after 5 s, from jemalloc's own thread: a service that
# decodes frames for months keeps a steady footprint instead of its peak.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0"


def reexec_with_jemalloc() -> None:
    """Run the service on jemalloc where Debian's libjemalloc2 is installed: the soak grew
    +9.7 MB per simulated hour (20 cameras) on glibc with two arenas, +3.9 on jemalloc.
    An allocator is chosen before the first allocation, so the process replaces itself
    (same pid) with LD_PRELOAD set. GRIDWATCH_ALLOCATOR=system keeps glibc."""
    import ctypes.util

    if os.environ.get("GRIDWATCH_ALLOCATOR", "jemalloc") == "system":
        return
    library = ctypes.util.find_library("jemalloc")  # a soname the dynamic loader finds itself
    maps = Path("/proc/self/maps")
    if library is None or not maps.is_file() or "libjemalloc" in maps.read_text():
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal

    reexec_with_jemalloc()
    limit_malloc_arenas()

    import uvicorn
    import yaml

    from detector.taxonomy import TaxonomyError, load_taxonomy
    from serving.api.app import create_app
    from serving.service import GridwatchService
    from serving.settings import SettingsError, load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-plugin start-up lines bury ours
    try:
        settings = load_settings(args.config, host=args.host, port=args.port, data_dir=args.data_dir, model=args.model,
                                 ray_address=args.ray_address)
        settings.resolved_model()
        taxonomy = load_taxonomy(settings.taxonomy_file)
        cameras = file_cameras(args.config, taxonomy)
        if settings.cameras_file is not None:  # a separate cameras YAML named in the settings
            cameras += file_cameras(settings.cameras_file, taxonomy)
        service = GridwatchService(settings, file_cameras=cameras)
    except (SettingsError, TaxonomyError, ValueError, OSError, yaml.YAMLError, RuntimeError) as exc:
        print(f"gridwatch serve: {exc}", file=sys.stderr)
        return 2
    if service.new_admin_key:
        print(f"admin API key (shown once, store it now): {service.new_admin_key}", flush=True)
    app = create_app(service)
    # proxy_headers off: uvicorn would believe X-Forwarded-For from loopback; the gate reads it
    # itself, from settings.trusted_proxies only.
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                                           timeout_graceful_shutdown=10, access_log=False, proxy_headers=False))
    # uvicorn re-raises the stop signal once it has shut down; with these handlers in place
    # that is a no-op, so the service's own shutdown below still runs.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    service.start()
    try:
        server.run()  # returns after SIGINT/SIGTERM once in-flight requests finish
    finally:
        service.stop()  # then streams close their events, cases are written, delivery finishes its send
    return 0
