"""The one execution engine (private); front-ends hand it a compiled ``Flow``.

Modules: ``flow`` (the compiled graph), ``engine`` (drives a run), ``run`` (one running
saga and how it is stopped), ``rules`` (pure decisions), ``writer`` (every write),
``deadlines`` (one timer for every saga's deadline).
"""
