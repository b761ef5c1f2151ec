"""Training: a built dataset in, a checkpoint (best.pt) out.

Entry point: `training.fit.train.train(...)` (`gridwatch train`); `finish_run` then hands the
checkpoint to export, evaluation and promotion. Around it:

    train       the run: start model, device, options; finishing a run (export, card, promotion)
    trainer     Ultralytics' trainer with gridwatch's sampling and no network
    sampling    repeat-factor sampling per class and source
    bootstrap   the COCO YOLOv8n rebuilt as a trainable .pt from the shared ONNX
    average     checkpoints of one lineage averaged into a new run (`gridwatch average`)

torch and Ultralytics load inside the functions that need them.
"""
