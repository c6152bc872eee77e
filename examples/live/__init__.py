"""Live sync over a real WebSocket server with SQLite: server, devices, demo.

Run the demo with ``python -m examples.live``; see ``docs/live.md``.

Modules:

* :mod:`examples.live.protocol`: the JSON messages and their strict decoding;
* :mod:`examples.live.database`: the server's SQLite log of changes;
* :mod:`examples.live.server`: :class:`~examples.live.server.LiveServer`;
* :mod:`examples.live.persistence`: a device's SQLite file;
* :mod:`examples.live.client`: :class:`~examples.live.client.LiveStore`, a device;
* :mod:`examples.live.demo`: the scripted two-device demo.
"""
