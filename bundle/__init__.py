"""fringelive.bundle: the model-bundle contract, a leaf that imports no other fringelive package.

``card`` (the card schema, strict parsing), ``bundle_io`` (load/write a bundle directory, sha256
checks), ``netspec`` (the torch-free network spec: registry, receptive field, memory per pixel),
``triton_names`` (Triton model naming) and ``typed`` (the strict typed parser shared by the card
and the daemon's TOML config)."""
