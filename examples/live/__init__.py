"""Live sync on the library's server and client: the demo, and one device to drive by hand.

Run the demo with ``python -m examples.live``; see ``docs/live.md``.

Modules:

* :mod:`examples.live.client`: :class:`~examples.live.client.LiveStore` (one
  declared field) and :class:`~examples.live.client.LiveDevice`, a thin
  wrapper over :func:`optisync.device.open_device`;
* :mod:`examples.live.network`: a link the demo can cut;
* :mod:`examples.live.timeline`: the demo's columns and final table;
* :mod:`examples.live.demo`: the five scenes on :mod:`optisync.server`;
* :mod:`examples.live.two_servers`: scene 6, two server processes on PostgreSQL;
* :mod:`examples.live.interactive`: ``--client URL --storage FILE``.
"""
