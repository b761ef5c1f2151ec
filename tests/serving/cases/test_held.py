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
