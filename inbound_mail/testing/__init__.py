"""What a sink plug-in author needs to test against real parts: a webhook
receiver (:mod:`.webhook_receiver`), provider email builders (:mod:`.emails`),
:func:`~inbound_mail.testing.wait.wait_until` and :func:`~inbound_mail.testing.toml.toml_value`.

The real-server harnesses (Dovecot, Cyrus, proxy, certificates, DNS, ...) are
dev-only and live in the repository's ``testsupport/`` package, not in the wheel."""
