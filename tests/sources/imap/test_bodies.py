"""``fetch_bodies``: the same answer as imapclient's ``fetch``, on every server."""

from __future__ import annotations

from inbound_mail.sources.imap.bodies import fetch_bodies
from inbound_mail.testing.emails import build_provider_email
from testsupport.mailbox import Mailbox

from helpers import ON_EVERY_SERVER


def sms(n: int) -> bytes:
    return build_provider_email(f"+39347{n:07d}", "+393331234333", "20240501120000", f"body {n}")


@ON_EVERY_SERVER
def test_bodies_match_imapclient_and_leave_mail_unseen(mailbox: Mailbox) -> None:
    mailbox.deliver_files([sms(n) for n in range(5)])
    uids = mailbox.uids()
    with mailbox.server.session(mailbox.user) as client:
        client.select_folder("INBOX")
        # A UID that is not (or no longer) in the folder is simply absent.
        asked = [*uids, max(uids) + 100]
        bodies = fetch_bodies(client, asked)
        expected = client.fetch(asked, ["BODY.PEEK[]"])
    assert bodies == {uid: expected[uid][b"BODY[]"] for uid in uids}
    assert [bodies[uid] for uid in uids] == [
        sms(n).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for n in range(5)
    ]
    assert all("\\Seen" not in flags for flags in mailbox.flags().values())


@ON_EVERY_SERVER
def test_an_unsolicited_flags_update_in_the_answer_changes_nothing(mailbox: Mailbox) -> None:
    """Another session flags a message: the server tells this one inside the FETCH's answer
    (``* n FETCH (FLAGS ...)``), an element of another shape, read by imapclient's parser."""
    mailbox.deliver_files([sms(n) for n in range(3)])
    uids = mailbox.uids()
    with (
        mailbox.server.session(mailbox.user) as reader,
        mailbox.server.session(mailbox.user) as other,
    ):
        reader.select_folder("INBOX")
        other.select_folder("INBOX")
        other.add_flags([uids[1]], ["\\Flagged"])
        bodies = fetch_bodies(reader, uids)
        again = fetch_bodies(reader, uids)
    assert list(bodies) == uids
    assert bodies == again
