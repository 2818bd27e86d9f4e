"""The python-socketio worker of the Python bench: ``"chat message"`` broadcast to every client
(``sio.emit``) and ``"whoami"``, on aiohttp, with one of three client managers:

    app.py alone PORT         one process, python-socketio's own manager, listening on PORT
    app.py clusterd           a clusterd worker with ClusterdManager (emits over clusterd's bus)
    app.py redis URL          a clusterd worker with python-socketio's AsyncRedisManager
                              (sessions made sticky by clusterd_worker.socketio.sticky_sessions)
"""

import os
import sys

import socketio
from aiohttp import web


def build(manager):
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)
    worker_id = int(os.environ.get("CLUSTERD_WORKER_ID", "0"))

    @sio.on("chat message")
    async def chat_message(sid, text):
        await sio.emit("chat message", text)

    @sio.on("whoami")
    async def whoami(sid, *_):
        return {"worker": worker_id, "pid": os.getpid()}

    app = web.Application()
    sio.attach(app)
    return sio, app


def main():
    mode = sys.argv[1]
    if mode == "alone":
        _, app = build(None)
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None,
                    handler_cancellation=True)
        return
    import clusterd_worker.aiohttp
    from clusterd_worker.socketio import ClusterdManager, sticky_sessions

    def make_app(worker):
        if mode == "clusterd":
            return build(ClusterdManager(worker))[1]
        sio, app = build(socketio.AsyncRedisManager(sys.argv[2]))
        sticky_sessions(sio, worker)
        return app

    clusterd_worker.aiohttp.run_app(make_app, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
