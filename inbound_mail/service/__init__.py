"""The running daemon: :mod:`.daemon` wires sources, store and delivery and
handles signals; :mod:`.generation` is one config's set of workers (replaced on
reload); :mod:`.notify` and :mod:`.systemd` speak to systemd; :mod:`.metrics`
and :mod:`.status` report on it."""
