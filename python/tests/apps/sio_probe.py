"""A python-socketio worker whose clients can act on clients of other workers, to test the
manager's cross-worker paths: ``"whoami"`` (ack ``{worker}``), ``"admin"`` (op, sid, room: enter,
leave, close or disconnect; ack ``"done"``) and ``"to"`` (room, text: ``"message"`` to that room,
a client's own sid included), and ``"boom"``, whose handler raises."""

import socketio
from aiohttp import web

import clusterd_worker.aiohttp
from clusterd_worker.socketio import ClusterdManager


def make_app(worker):
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=ClusterdManager(worker))

    @sio.on("whoami")
    async def whoami(sid, *_):
        return {"worker": worker.id}

    @sio.on("admin")
    async def admin(sid, op, target, room=None):
        if op == "enter":
            await sio.enter_room(target, room)
        elif op == "leave":
            await sio.leave_room(target, room)
        elif op == "close":
            await sio.close_room(room)
        elif op == "disconnect":
            await sio.disconnect(target)
        return "done"

    @sio.on("boom")
    async def boom(sid, *_):
        raise RuntimeError("a handler that raises")

    @sio.on("to")
    async def to(sid, room, text):
        await sio.emit("message", text, room=room)

    app = web.Application()
    sio.attach(app)
    return app


if __name__ == "__main__":
    clusterd_worker.aiohttp.run_app(make_app)
