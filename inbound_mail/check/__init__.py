"""``inbound-mail check``: :mod:`.accounts` runs every step and checks the IMAP
accounts, :mod:`.sinks` the sinks, :mod:`.lines` defines the report's lines."""
