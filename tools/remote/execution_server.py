"""BuildGrid's server, as `bgd server start CONFIG.yml` runs it, with two changes to its queue
timeout for its users:

- a job fails only when no worker of its platform (its Pool) is connected: one that waits for a
  busy worker of its pool keeps waiting, however few workers the pool has and however many jobs
  Bazel sends at once (BuildGrid alone fails it too, once it has waited the timeout);
- the failure names the platform that no worker served, instead of BuildGrid's "Operation has
  been queued for too long" alone.

Started by tools/remote/execution with the tool environment's interpreter.
"""

import collections
import sys

from buildgrid.server.app import cli
from buildgrid.server.scheduler import impl
from buildgrid.server.sql.models import BotPlatformEntry, JobEntry
from sqlalchemy import select

QUEUED_TOO_LONG = "Operation has been queued for too long"
_timeout_jobs = impl.Scheduler._batch_timeout_jobs


def _timeout_jobs_naming_their_platform(self, job_select_stmt, status_code, message):
    if message != QUEUED_TOO_LONG:
        return _timeout_jobs(self, job_select_stmt, status_code, message)
    by_platform = collections.defaultdict(list)
    with self._sql.session() as session:
        # A worker's platforms are registered while its session lives (busy or idle) and removed
        # when it ends or expires, so a lost worker's pool times out again.
        served = set(session.execute(select(BotPlatformEntry.platform)).scalars().all())
        for job in session.execute(job_select_stmt).scalars().all():
            if job.platform_requirements in served:
                continue
            platform = ", ".join(sorted(f"{p.key}={p.value}" for p in job.platform))
            by_platform[platform].append(job.name)
    waited = int(self.queue_timeout_options.job_max_age.total_seconds())
    count = 0
    for platform, names in by_platform.items():
        count += _timeout_jobs(
            self, select(JobEntry).where(JobEntry.name.in_(names)), status_code,
            f"{QUEUED_TOO_LONG}: no worker with {{{platform}}} took it within {waited}s. "
            "Start workers for that pool, or run with a platform whose pool has workers.",
        )
    return count


impl.Scheduler._batch_timeout_jobs = _timeout_jobs_naming_their_platform

if __name__ == "__main__":
    sys.argv[0] = "bgd"
    sys.exit(cli())
