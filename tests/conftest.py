import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Sets Ray's environment (usage stats off, token auth on) before any test imports Ray, as the CLI does.
import harness.running.scheduler  # noqa: E402,F401
