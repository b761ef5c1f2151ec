"""Evaluation: per-class AP of a model on labelled images, as served.

Entry point: `training.evaluation.evaluate.evaluate(predictor, eval_set)` (`gridwatch eval`),
which returns an `EvalResult`. Around it:

    metrics          the AP arithmetic, apart from reading images
    evaluate         eval sets, predictors (ONNX as served, tiled, Ultralytics), folds by place
    eval_audit       progress, overlap with the training set, per-image errors (`--save-errors`)
    eval_plots       PR curve and confusion matrix
    review_judging   the review val split scored on people's labels only
"""
