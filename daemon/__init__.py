"""fringelive.daemon: the streaming daemon, I/O only: wire protocol codecs, sockets and threads,
control requests, metrics, CURVE, configuration, the model set with its reload policy and result
assembly. The arrays are computed by ``fringelive.engine``; the daemon never imports training or
export."""
