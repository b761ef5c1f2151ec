"""`gridwatch eval --plots`: PR curves and the confusion matrix as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.evaluation.evaluate import EvalError
from training.evaluation.metrics import CONFUSION_IOU, EvalResult


def write_plots(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """matplotlib's bundled font, no downloads."""
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plots needs matplotlib: pip install 'gridwatch[train]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(8, 6), tight_layout=True)
    for name, (mrec, mpre) in result.pr_curves.items():
        ax.plot(mrec, mpre, linewidth=1.2, label=f"{name} {result.classes[name].ap50:.3f}")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Precision-recall at IoU 0.5 (mAP50 {result.map50:.3f})")
    if result.pr_curves:
        ax.legend(loc="lower left", fontsize=8)
    path = out / "PR_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    if result.confusion is not None:
        names = result.confusion_names
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1 + 0.6 * len(names)), tight_layout=True)
        ax.imshow(result.confusion, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="True", ylabel="Predicted",
               title=f"Confusion at score >= {result.operating_threshold}, IoU > {CONFUSION_IOU}")
        for (r, c), v in np.ndenumerate(result.confusion):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=7)
        path = out / "confusion_matrix.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
