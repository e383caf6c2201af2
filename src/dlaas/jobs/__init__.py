"""The job: where it lives in storage (``layout``), its typed records (``records``), the
queue bodies about it (``messages``) and the store that reads and writes it (``store``).

"Where is a job?" has this one answer; the tiers above call it and spell no key.
"""
