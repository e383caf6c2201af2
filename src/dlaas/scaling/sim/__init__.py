"""The autoscaler at cloud scale, in simulated time (``dlaas simulate``).

- ``params``: a scenario (``SimParams``) and its presets;
- ``queue``: ``SimQueue``, SQS semantics on a simulated clock;
- ``engine``: the event loop that runs the real ``Controller`` against them;
- ``report``: what a run reports, and the table ``bench/elastic.py`` prints too;
- ``cli``: the ``dlaas simulate`` command.
"""
