"""fringelive.engine: the pure array → array stages (preprocessing, tiling, particles, image
estimates, confidence, CUSUM, envelope, drift, routing, calibration), the torch networks, the
inference backends and the pipeline that composes them. Imports only ``fringelive.bundle``;
the daemon, training and export are its clients."""
