"""Email -> outcome, pure: :mod:`.message` turns one email's bytes into a record,
a skip or a reject (:func:`~inbound_mail.parse.message.parse_email`); beside it
:mod:`.html` (HTML bodies to text), :mod:`.charsets` (the charset allow-list),
:mod:`.limits` (bounded parse cost) and :mod:`.authenticity` (is the sender the
provider: DKIM, Authentication-Results)."""
