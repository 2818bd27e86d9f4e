// A Node worker that uses prom-client's cluster support, unmodified for clusterd: it creates an
// AggregatorRegistry (which answers the primary's metrics requests), counts 2 + its slot requests,
// sets a gauge aggregated with `max` to 10 × (slot + 1), and observes 0.05 s and 2 s in a
// histogram. With PRIMARY=1 the same file is a Node cluster primary of WORKERS workers that prints
// `await new AggregatorRegistry().clusterMetrics()` once every worker has set its metrics, and exits.
// With NO_AGGREGATOR=1 a worker creates no AggregatorRegistry: it never answers the primary.
'use strict';
const cluster = require('node:cluster');
const client = require('prom-client');

const registry = process.env.NO_AGGREGATOR ? null : new client.AggregatorRegistry();

if (process.env.PRIMARY && cluster.isPrimary) {
	cluster.setupPrimary({ serialization: process.env.SERIALIZATION || 'json' });
	const count = Number(process.env.WORKERS || 2);
	let ready = 0;
	cluster.on('message', (worker, message) => {
		if (message && message.type === 'app:ready' && ++ready === count) {
			registry.clusterMetrics().then(
				text => {
					process.stdout.write(text);
					for (const id in cluster.workers) cluster.workers[id].kill();
				},
				error => {
					console.error(error);
					process.exit(1);
				},
			);
		}
	});
	for (let i = 0; i < count; i++) cluster.fork();
} else {
	const slot = process.env.PRIMARY ? cluster.worker.id - 1 : Number(process.env.CLUSTERD_WORKER_ID);
	client.collectDefaultMetrics();
	const requests = new client.Counter({ name: 'app_requests_total', help: 'Requests served.' });
	const queue = new client.Gauge({ name: 'app_queue_depth', help: 'Jobs waiting.', aggregator: 'max' });
	const latency = new client.Histogram({ name: 'app_latency_seconds', help: 'Request latency.' });
	requests.inc(2 + slot);
	queue.set(10 * (slot + 1));
	latency.observe(0.05);
	latency.observe(2);
	process.send({ type: 'app:ready' });
	// Alive until the primary disconnects it.
	const alive = setInterval(() => {}, 1 << 30);
	process.on('disconnect', () => clearInterval(alive));
}
