"""fringelive.stream: the tools that talk to a running daemon: send and watch, the result merger,
the result recorder, the simulated camera and the demo driver."""
