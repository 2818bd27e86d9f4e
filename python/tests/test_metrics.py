"""Worker.set_metrics against the real clusterd: each worker's prometheus_client registry is on
the gathered scrape (``clusterd metrics``) with a ``worker`` label, and a worker that answers
garbage is left out and counted."""

import os
import sys

from conftest import APPS, wait_until

PROBE = os.path.join(APPS, "metrics_probe.py")


def samples(text, name):
    return [line for line in text.splitlines() if not line.startswith("#") and line.split("{")[0].split(" ")[0] == name]


def test_each_workers_registry_is_on_the_scrape_with_a_worker_label(start_cluster):
    cluster = start_cluster(["--workers", "2"], [sys.executable, PROBE])
    cluster.wait_ready(2)

    def both():
        done = cluster.cli("metrics")
        return done if len(samples(done.stdout, "app_hits_total")) == 2 else None

    done = wait_until("both workers' metrics", both, context=cluster.output)
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout.count("# TYPE app_hits_total counter\n") == 1, done.stdout
    assert samples(done.stdout, "app_hits_total") == [
        'app_hits_total{worker="0",kind="test"} 1.0',
        'app_hits_total{worker="1",kind="test"} 2.0',
    ]
    # A real Prometheus text parser reads it: one family, one sample per worker.
    from prometheus_client.parser import text_string_to_metric_families
    families = {f.name: f for f in text_string_to_metric_families(done.stdout)}
    hits = families["app_hits"]
    assert hits.type == "counter"
    assert sorted((s.labels["worker"], s.value) for s in hits.samples if s.name == "app_hits_total") == [
        ("0", 1.0), ("1", 2.0)]
    # prometheus_client's process collector would collide with clusterd's own process_*.
    assert not samples(done.stdout, "process_resident_memory_bytes"), done.stdout
    assert len(samples(done.stdout, "worker_process_resident_memory_bytes")) == 2, done.stdout


def test_a_worker_that_answers_garbage_is_left_out_and_counted(start_cluster):
    cluster = start_cluster(["--workers", "1"], [sys.executable, PROBE], env={"METRICS": "garbage"})
    cluster.wait_ready(1)

    def counted():
        done = cluster.cli("metrics")
        return done if "1 worker did not answer" in done.stderr else None

    done = wait_until("the garbage answer to be counted", counted, context=cluster.output)
    assert done.returncode == 0 and done.stdout == "", done
    assert cluster.status()["workers"][0]["state"] == "ready"
