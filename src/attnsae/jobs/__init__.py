"""The commands' work, callable from Python with plain arguments (the CLI only parses and prints):

* :mod:`~attnsae.jobs.inputs` — what a command reads: SAEs and their model, the corpus defaults, token contexts,
  output folders;
* :mod:`~attnsae.jobs.quickstart` — the main job: train, evaluate and read an SAE per layer;
* :mod:`~attnsae.jobs.evaluation` — ``attnsae eval``; :mod:`~attnsae.jobs.attribute` — ``attnsae attribute``;
  :mod:`~attnsae.jobs.corpus_cache` — ``attnsae corpus`` and ``attnsae cache``;
* :mod:`~attnsae.jobs.reading` — the dashboard job: studies and views into one atomic folder;
* :mod:`~attnsae.jobs.studies` — the case-study jobs (prefix induction, IOI), each written by its view;
* :mod:`~attnsae.jobs.exactness` — every stage checked against a direct computation (``attnsae info --check``).
"""
