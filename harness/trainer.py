"""Stable entry point for re-running a stored trial: ``harness.trainer.run_trial(json.loads(row.config))``.

The implementation lives in ``harness.running.trainer``; this name is part of the public contract.
"""

from harness.running.trainer import TrialResult, run_trial

__all__ = ["TrialResult", "run_trial"]
