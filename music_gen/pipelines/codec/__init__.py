"""Training and evaluating audio codecs on Ray (``music-gen codec train|evaluate``).

Read in this order: ``data.py`` (audio listed and decoded as ``data tokenize`` does),
``worker.py`` (one Ray Train worker: k-means init, then a flat loop), ``driver.py``
(checks, the trainer, ``train_codec``), ``evaluate.py`` (quality figures of a codec
directory). The model side, in plain PyTorch, is ``models/codec_training.py``.
"""
