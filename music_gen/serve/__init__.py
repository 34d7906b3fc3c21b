"""Ray Serve: the HTTP app (``app.build_app``), its deployments, schemas and web page.

``batching.generate_batch`` is the only call the model replicas make to generate; nothing
here is imported by the inner layer (``models/``, ``audio/``).
"""
