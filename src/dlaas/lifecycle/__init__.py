"""What happens to a job after it is accepted, in the background: completion webhooks
(``webhooks``, with their SSRF ``guard``) and the retention ``janitor``.

Both work on the object store alone, through ``dlaas.jobs``, so any web process, the
controller or a restarted process can pick up where another left off.
"""
