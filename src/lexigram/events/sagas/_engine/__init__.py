"""The one execution engine (private); front-ends hand it a compiled ``Flow``.

``engine`` launches runs and drives the forward path; ``compensation`` the backward path;
``attempt`` runs one attempt; ``run`` holds one running saga and the stop protocol;
``steps`` keeps step records; ``rules`` holds the pure rules; ``writer`` makes every write;
``backoff``, ``heartbeat``, ``announce``, ``deadlines`` and ``recovery`` each own one
policy. See ``docs/architecture.md``.
"""
