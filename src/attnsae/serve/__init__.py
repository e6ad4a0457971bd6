"""Serving: the Circuit Explorer, a local web app over a model and its attention SAEs (``attnsae explore``).

* :mod:`~attnsae.serve.session` — ``PromptSession``: one prompt captured once, every explorer question answered;
* :mod:`~attnsae.serve.schemas` — the JSON API's request bodies and their bounds;
* :mod:`~attnsae.serve.app` — the FastAPI app (``create_app``) over :class:`attnsae.serve.session.PromptSession`;
  the page itself is ``views/assets/explorer.*``;
* :mod:`~attnsae.serve.cards` — ``FeatureCards``: feature cards, feature search and user labels.
"""
