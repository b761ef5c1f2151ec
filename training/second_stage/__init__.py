"""Second stages learnt from reviews (issue #28, item 4): `gridwatch second-stage ...`.

- `examples.py`: a review export (`gridwatch review export`) read as labelled crops: the load
  decision on truck cases, and each violation's confirmed/rejected cases for its false-alarm filter;
- `net.py`: a small CNN trained from scratch on CPU (torch, inside the command only) and its
  ONNX export, in the form `detector.second_stage.CropClassifier` runs;
- `card.py`: precision and recall per class on a held-out split of reviewed cases, and the card;
- `false_alarms.py`: the false-alarm filter per violation, measured on a replay of reviewed
  cases (rejected cases removed at a held recall of confirmed ones);
- `commands.py`: the CLI.
"""
