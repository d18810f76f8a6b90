"""fringelive.daemon: the streaming inference daemon and the runtime engine it shares with training.

Pure array stages (``preprocess``, ``tiling``, ``particles``) live here because the daemon is
where they run on every frame; training imports the very same functions.
"""
