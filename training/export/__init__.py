"""Export: a checkpoint to the served ONNX files, in a run folder with their card.

Entry point: `training.export.export_run.export_run(...)` (`gridwatch export`), which never
writes into the served model's folder (weights/). Around it:

    export       fp32 ONNX and the detector's own int8 (calibrated on real images, with progress)
    export_run   the run folder: export, evaluation on the checkpoint's val split, the card
"""
