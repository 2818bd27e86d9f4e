"""A worker that registers its metrics with ``Worker.set_metrics``: a ``prometheus_client``
counter ``app_hits`` of id + 1 in the default registry (which also has the client's ``process_*``
and ``python_*`` collectors). With ``METRICS=garbage`` it registers a function returning text that
is not the 0.0.4 format instead."""

import asyncio
import os

from prometheus_client import REGISTRY, Counter

from clusterd_worker import Worker


async def main() -> None:
    worker = await Worker.start()
    if os.environ.get("METRICS") == "garbage":
        worker.set_metrics(lambda: 'app_hits_total{kind="oops} 1\n')
    else:
        hits = Counter("app_hits", "Hits.", ["kind"])
        hits.labels(kind="test").inc(worker.id + 1)
        worker.set_metrics(REGISTRY)
    await worker.ready()
    print(f"ready id={worker.id}", flush=True)
    await worker.draining()


asyncio.run(main())
