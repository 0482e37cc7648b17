"""Configuration: :mod:`.model` holds the frozen dataclasses with their defaults
(the one source of truth), :mod:`.reader` turns a TOML file into them
(:func:`~inbound_mail.config.reader.load_config`), with errors that name the
file and the key."""
