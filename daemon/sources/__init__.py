"""Frame sources besides the daemon's own ZeroMQ ingest (``[[source]]`` in the config,
``fringelive serve --follow DIR``; docs/acquisition.md): ``folder`` (files a microscope
writes), ``dectris`` (DECTRIS Stream V1/V2), ``deapi`` (Direct Electron DE-Server).

Only the contract is imported here; each kind's module is imported when a source of that kind is
opened (``config.open_source``)."""

from fringelive.daemon.sources.base import FrameSource, SourceError, SourceFrame, ThreadedSource, to_frame

__all__ = ["FrameSource", "SourceError", "SourceFrame", "ThreadedSource", "to_frame"]
