"""A worker that exercises the bus under the real clusterd and prints what it saw.

Every worker subscribes to ``news``, answers requests with ``<id>:<question>`` and prints the
messages and direct messages it gets. Worker 0, once every worker subscribes (the count is exact),
publishes, sends to worker 1 and to a worker that does not exist, and asks the others.
"""

import asyncio

import clusterd_worker


async def main():
    worker = await clusterd_worker.Worker.start()
    bus = worker.bus
    news = await bus.subscribe("news")

    async def answer():
        async for request in bus.requests():
            request.reply(f"{worker.id}:{request.payload.decode()}".encode())

    async def direct():
        async for message in bus.direct_messages():
            print(f"worker {worker.id} direct from {message.sender}: {message.payload.decode()}", flush=True)

    async def read_news():
        async for message in news:
            print(f"worker {worker.id} news from {message.sender}: {message.payload.decode()}", flush=True)

    async def events():
        async for event in bus.events():
            if event.kind == "undeliverable":
                print(f"worker {worker.id} undeliverable {event.worker}", flush=True)

    tasks = [asyncio.ensure_future(f()) for f in (answer, direct, read_news, events)]
    await worker.ready()
    if worker.id == 0:
        while await bus.subscribers("news") < worker.count:
            await asyncio.sleep(0.02)  # the others are still starting; the exact count decides
        await bus.publish("news", b"hello")
        await bus.send(1, b"psst")
        await bus.send(99, b"nobody")
        answers = await bus.request(b"q", timeout=10)
        print(f"worker 0 answers {sorted(a.decode() for _, a in answers.answers)} missing {answers.missing}",
              flush=True)
    await worker.draining()
    for task in tasks:
        task.cancel()
    print(f"worker {worker.id} drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
