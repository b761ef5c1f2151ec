"""Promotion: which model serves, and the record of every one that did.

Entry point: `training.promotion.promote.decide(challenger, champion)` (champion/challenger),
used by `gridwatch train --promote` and `gridwatch retrain`; a forced promotion and a rollback
go through `model_history` (`gridwatch models`). Around it:

    promote         champion/challenger decisions, the rule-class guard, installing into weights/
    model_card      the model card as a typed record (`ModelCard`), Markdown and JSON
    model_history   weights/history/: every model promoted, promotions and rollbacks
    retrain         the learning loop: base + review sources, fine-tune, judge, promote
"""
