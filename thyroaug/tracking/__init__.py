"""MLflow set-up from the profiles in ``mlruns_config/``, logging helpers, registry, compare."""

from thyroaug.tracking.setup import configure_tracking, project_home, start_run

__all__ = ["configure_tracking", "project_home", "start_run"]
