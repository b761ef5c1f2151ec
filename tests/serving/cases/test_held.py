"""Events held while the database or the evidence disk is away: in order, frames bounded."""

from __future__ import annotations

import cv2
import numpy as np

from serving.cases.held import HeldEvents
from serving.evidence import EvidenceFrame


def test_held_events_keep_order_and_bound_their_frames(make_event, dataset_images) -> None:
    first, first_frame = make_event("opened", event_id="a", image=0)
    decoded = cv2.imread(str(dataset_images[1]), cv2.IMREAD_COLOR)
    second, _ = make_event("opened", event_id="b", image=1)
    third, third_frame = make_event("opened", event_id="c", image=2)
    png_bytes = len(cv2.imencode(".png", decoded)[1])
    held = HeldEvents(max_frame_bytes=len(first_frame.encoded) + png_bytes)  # room for two frames

    held.append(first, first_frame)
    held.append(second, EvidenceFrame(box=(1, 1, 50, 50), image=decoded))  # a decoded camera frame
    held.append(third, third_frame, fencing=7)  # past the bound: kept, without its frame
    assert len(held) == 3 and held.frames_dropped == 1

    event, frame, fencing = held.first()
    assert event.event_id == "a" and frame.encoded == first_frame.encoded  # an upload's bytes, unaltered
    held.pop_first()
    event, frame, fencing = held.first()
    # Held as lossless PNG, a fraction of the decoded frame's memory, the same pixels.
    assert event.event_id == "b" and frame.image is None and frame.suffix == ".png"
    assert len(frame.encoded) < decoded.nbytes and np.array_equal(frame.decoded(), decoded)
    held.pop_first()
    event, frame, fencing = held.first()
    assert event.event_id == "c" and frame is None and event.needs_review  # a person looks, without a picture
    assert fencing == 7  # a cluster worker's lease number stays with its event
    held.pop_first()
    assert held.first() is None and held.frame_bytes == 0


def test_held_events_are_spooled_and_found_again_after_a_restart(make_event, dataset_images, tmp_path, caplog) -> None:
    from detector.detections import Detections

    spool = tmp_path / "held"
    first, first_frame = make_event("opened", event_id="a", image=0)
    second, _ = make_event("opened", event_id="b", image=1)
    third, _ = make_event("closed", event_id="a", evidence=False)
    decoded = cv2.imread(str(dataset_images[1]), cv2.IMREAD_COLOR)
    seen = Detections(xyxy=np.array([[10, 20, 110, 220]], np.float32), scores=np.array([0.71], np.float32),
                      class_ids=np.array([3], np.int64), names={3: "garbage_bin"})
    held = HeldEvents(max_frame_bytes=2**30, spool=spool)
    held.append(first, first_frame)
    held.append(second, EvidenceFrame(box=(1, 1, 50, 50), label="bin", image=decoded, detections=seen), fencing=4)
    held.append(third, None)
    assert len(list(spool.glob("*.npz"))) == 3
    held.pop_first()  # stored: its file goes
    assert len(list(spool.glob("*.npz"))) == 2

    # The process is killed here; a torn write and a foreign file lie beside the two held events.
    (spool / ".000000000007.npz.tmp").write_bytes(b"half")
    (spool / "000000000005.npz").write_bytes(b"not an event")
    again = HeldEvents(max_frame_bytes=2**30, spool=spool)
    assert len(again) == 2
    event, frame, fencing = again.first()
    assert event == second and fencing == 4
    assert frame.box == (1, 1, 50, 50) and frame.label == "bin" and np.array_equal(frame.decoded(), decoded)
    assert frame.detections.names == {3: "garbage_bin"} and frame.detections.scores.tolist() == [np.float32(0.71)]
    assert np.array_equal(frame.detections.xyxy, seen.xyxy)
    again.pop_first()
    event, frame, fencing = again.first()
    assert event == third and frame is None and fencing is None
    assert (spool / "000000000005.bad").exists() and not list(spool.glob(".*.tmp"))
    assert "cannot be read" in caplog.text
    again.append(first, first_frame)  # numbered after what the earlier process wrote
    assert sorted(p.name for p in spool.glob("*.npz"))[-1] == "000000000006.npz"
