"""Flags for runs that finished but did not learn: at chance, or with the training loss rising.

Such a run is not an error (its numbers are kept and reported), but a comparison that shows it
without a mark misleads, so the fit loop sets its status to ``chance`` or ``diverging`` instead of
``complete``, warns, and the report lists it.
"""
from __future__ import annotations

import math

# within this many accuracy points of always answering the most frequent class counts as chance
CHANCE_MARGIN = 0.02
# the training loss rose in each of this many last epochs ...
RISING_EPOCHS = 2
# ... and ended this fraction above the best (lowest) it had reached: noise does not rise that far,
# while the accuracy the run reports fell below its best (a stochastic rule's loss may wander while
# its accuracy holds: that is not a run going wrong)
RISING_FRACTION = 0.05


# statuses of runs that trained to their end (flagged or not), as against ``running`` (killed) and
# ``diverged`` (stopped on a non-finite value)
FINISHED = ("complete", "chance", "diverging")
FLAGGED = ("chance", "diverging")


class RunHealthWarning(UserWarning):
    """A run ended at chance or with its training loss rising."""


def health_check(records: list[dict], *, chance: float | None, best_epoch: int | None = None,
                 trend: bool = True) -> tuple[str, str | None]:
    """``("complete", None)``, or ``(status, reason)`` with status ``chance`` or ``diverging``.

    Accuracy is read on the validation split (the test split where a run has none) at the epoch a
    report shows: ``best_epoch`` under early stopping, else the last.
    """
    if not records:
        return "complete", None
    record = records[best_epoch - 1] if best_epoch else records[-1]
    accuracy = record.get("accuracy", {})
    split = "val" if "val" in accuracy else "test"
    value = accuracy.get(split)
    if chance is not None and value is not None and value <= chance + CHANCE_MARGIN:
        return "chance", (f"{split} accuracy {100 * value:.2f}% is within {100 * CHANCE_MARGIN:.0f} points of "
                          f"chance ({100 * chance:.2f}%): the rule did not learn at these settings; lower the "
                          "learning rate or tune it (docs/sweeps.md)")
    if trend:
        losses = [r.get("train_loss") for r in records]
        if len(losses) > RISING_EPOCHS and all(v is not None and math.isfinite(v) for v in losses):
            tail = losses[-RISING_EPOCHS - 1:]
            rising = all(b > a for a, b in zip(tail, tail[1:]))
            best = min(losses)
            seen = [r.get("accuracy", {}).get(split) for r in records]
            worse = value is None or None in seen or value < max(seen)
            if rising and worse and tail[-1] > best + RISING_FRACTION * abs(best):
                return "diverging", (f"the training loss rose in each of the last {RISING_EPOCHS} epochs, "
                                     f"to {tail[-1]:.4g} from a best of {best:.4g}; lower the learning rate")
    return "complete", None
