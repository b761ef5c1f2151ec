"""Prometheus text exposition, written by hand: a few gauges and counters need no library."""

from __future__ import annotations

from typing import Any


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(m: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {float(value)}" if label_text else f"{name} {float(value)}")

    pipeline, counters = m["pipeline"], m["counters"]
    metric("gridwatch_frames_total", "counter", "Frames sampled from cameras.", [({}, pipeline.get("frames", 0))])
    metric("gridwatch_frames_detected_total", "counter", "Frames that ran the detector.", [({}, pipeline.get("detected", 0))])
    metric("gridwatch_detect_requests_total", "counter", "POST /v1/detect requests served.", [({}, counters["detect_requests"])])
    metric("gridwatch_detections_total", "counter", "Boxes returned by POST /v1/detect.", [({}, counters["detections"])])
    metric("gridwatch_events_total", "counter", "Violation events received by the case layer.", [({}, m["case_counts"]["events"])])
    metric("gridwatch_events_pending", "gauge", "Events waiting for the database.", [({}, m["pending_events"])])
    metric("gridwatch_outlet_items_total", "counter",
           "What the pipeline handed to the database writer: events, samples, events spooled to disk past "
           "the memory bound, labelling samples let go past it.",
           [({"kind": k}, v) for k, v in sorted(m.get("outlet", {}).items())])
    metric("gridwatch_database_up", "gauge",
           "1 if the case, outbox and re-check figures here were read from the database just now; 0: "
           "it is away and they are the last ones read.", [({}, 1 if m.get("database_up", True) else 0)])
    metric("gridwatch_cases_created_total", "counter", "Cases created since start.", [({}, m["case_counts"]["cases_created"])])
    metric("gridwatch_cases", "gauge", "Cases by state.", [({"state": k}, v) for k, v in sorted(m["cases_by_state"].items())])
    metric("gridwatch_cases_review", "gauge", "Cases by review status.", [({"review_status": k}, v) for k, v in sorted(m["cases_by_review"].items())])
    outbox = m["outbox"]
    metric("gridwatch_outbox_messages", "gauge", "Outbox messages by state.",
           [({"state": s}, outbox[s]) for s in ("pending", "delivered", "dead")])
    metric("gridwatch_delivery_lag_seconds", "gauge", "Age of the oldest undelivered message.", [({}, outbox["lag_s"])])
    model = m["model"]
    metric("gridwatch_model_info", "gauge", "The model serving now (its version as a label).",
           [({"version": model["version"]}, 1)])
    metric("gridwatch_model_swaps_total", "counter", "Models put live without a restart.", [({}, model["swaps"])])
    metric("gridwatch_frames_tiled_total", "counter", "Static checks run tiled at full resolution.",
           [({}, pipeline.get("tiled", 0))])
    waits = [h["tiled_check_waiting_s"] for h in m["cameras"].values()
             if h.get("tiled_check_waiting_s") is not None]  # CameraRegistry.health
    metric("gridwatch_tiled_checks_waiting", "gauge",
           "Cameras whose due tiled check waits its turn (one check runs at a time, within its share of time).",
           [({}, len(waits))])
    metric("gridwatch_tiled_check_wait_seconds", "gauge",
           "How long the longest-waiting due tiled check has waited; past tiled_check_every, periods go unchecked.",
           [({}, max(waits, default=0.0))])
    metric("gridwatch_tiled_checks_missed_total", "counter",
           "Periods of tiled_check_every in which a camera's due tiled check waited throughout, so had none.",
           [({}, pipeline.get("tiled_missed", 0))])
    metric("gridwatch_labelling_sampled_total", "counter", "Unsure frames sampled into the labelling queue.",
           [({}, pipeline.get("sampled", 0))])
    metric("gridwatch_rechecks", "gauge", "Re-checks of handled cases by state (verified, reopened, ...).",
           [({"state": k}, v) for k, v in m["rechecks"].items()])
    cams = m["cameras"]
    metric("gridwatch_camera_connected", "gauge", "1 if the camera's stream is connected.",
           [({"camera": cid}, 1 if h.get("connected") else 0) for cid, h in sorted(cams.items())])
    metric("gridwatch_camera_errors_total", "counter", "Stream errors per camera.",
           [({"camera": cid}, h.get("errors", 0) if isinstance(h.get("errors"), (int, float)) else 0)
            for cid, h in sorted(cams.items())])
    cluster = m.get("cluster")
    if cluster:  # cluster mode: each camera worker's figures, merged here
        workers = cluster["workers"]

        def per_worker(key: str) -> list[tuple[dict[str, Any], float]]:
            return [({"worker": w["worker"], "node": w["node"]}, w[key]) for w in workers]

        metric("gridwatch_worker_up", "gauge", "1 if the camera worker answers its heartbeat; 0 if not, or dead.",
               [({"worker": w["worker"], "node": w["node"]}, 1 if w["state"] == "up" else 0) for w in workers])
        metric("gridwatch_worker_cameras", "gauge", "Cameras a worker holds the lease of.",
               [({"worker": w["worker"], "node": w["node"]}, len(w["cameras"])) for w in workers])
        metric("gridwatch_worker_frames_per_second", "gauge", "Frames a worker analysed per second.",
               per_worker("frames_per_s"))
        metric("gridwatch_worker_queue_depth", "gauge", "Events waiting in a worker for the case store.",
               per_worker("queue_depth"))
        metric("gridwatch_worker_detect_ms", "gauge", "Mean detector call of a worker, ms.", per_worker("detect_ms"))
        metric("gridwatch_worker_restarts_total", "counter", "Times a worker lost its leases and came back.",
               per_worker("restarts"))
        metric("gridwatch_worker_samples_dropped_total", "counter",
               "Labelling samples a worker turned away because its hand-over queue was full.",
               per_worker("samples_dropped"))
        moves = cluster["counters"]
        metric("gridwatch_cluster_workers_lost_total", "counter", "Workers whose leases timed out.",
               [({}, moves["workers_lost"])])
        metric("gridwatch_cluster_workers_dead_total", "counter", "Workers Ray reported dead.",
               [({}, moves["workers_dead"])])
        metric("gridwatch_cluster_cameras_moved_total", "counter", "Cameras started on another worker.",
               [({}, moves["cameras_moved"])])
        metric("gridwatch_cluster_cameras_unplaced", "gauge", "Cameras no worker runs now.",
               [({}, len(cluster["unplaced"]))])
        metric("gridwatch_cluster_cameras_finished", "gauge",
               "File and folder cameras played to their end: never placed again until changed.",
               [({}, len(cluster.get("finished", ())))])
        metric("gridwatch_cluster_cameras_handing_off", "gauge",
               "Cameras leaving a worker: their events being filed before their lease moves.",
               [({}, len(cluster.get("handing_off", ())))])
    metric("gridwatch_events_fenced_total", "counter",
           "Events refused because their camera's lease had moved to another worker.",
           [({}, counters.get("events_fenced", 0))])
    evidence = m.get("evidence") or {}
    if evidence:  # serving/retention.py, serving/chain.py
        metric("gridwatch_evidence_bytes", "gauge", "Bytes of evidence files kept.", [({}, evidence["bytes"])])
        metric("gridwatch_evidence_files", "gauge", "Evidence files kept.", [({}, evidence["files"])])
        metric("gridwatch_evidence_chain_entries", "gauge", "Entries in the evidence chain.",
               [({}, evidence["chain_entries"])])
        metric("gridwatch_evidence_purged_bytes_total", "counter", "Evidence bytes purged by retention.",
               [({}, evidence["purged_bytes"])])
        metric("gridwatch_evidence_keep_days", "gauge", "Days each outcome's evidence is kept (retention).",
               [({"outcome": k}, v) for k, v in sorted(evidence["keep_days"].items())])
        for name, key, text in (("gridwatch_evidence_last_purge_timestamp_seconds", "last_purge", "last"),
                                ("gridwatch_evidence_next_purge_timestamp_seconds", "next_purge", "next")):
            if evidence.get(key) is not None:
                metric(name, "gauge", f"When the {text} retention purge ran or runs (Unix time).",
                       [({}, evidence[key])])
    return "\n".join(lines) + "\n"
