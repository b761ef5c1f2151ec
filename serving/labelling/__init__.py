"""The labelling queue: unsure frames the pipeline sampled (serving/pipeline/uncertainty.py),
stored with the model's detections, labelled by reviewers on the review page in labelling
mode, and exported with the review decisions."""
