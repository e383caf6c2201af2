"""What happens to a job after it is accepted: listing, cancelling, purging, idempotent
submits, completion webhooks and the retention janitor.

Everything here works on the object store alone, so any web process, the controller or a
restarted process can pick up where another left off. The web routes are in
``dlaas.web.lifecycle``; the worker only reads the cancel marker (``protocol.cancel_key``).
"""
