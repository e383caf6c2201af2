"""dlaas on AWS: clients, the worker's user data and its instance helpers.

Importing this package needs nothing beyond dlaas itself; the modules that talk to AWS
(``clients``, and what imports it) need boto3, from ``dlaas[aws]``.
"""
