"""The whole ``dovecot.conf`` of a test instance (run by :mod:`testsupport.dovecot`)."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerIdentity", "render_config"]

# Dovecot 2.3's post-login capabilities, less IDLE: imap_capability replaces
# the list, it cannot remove one item from it.
_CAPABILITIES_WITHOUT_IDLE = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE"
)
# Services that chroot by default; chroot needs root, so a normal user clears them.
_CHROOTED_SERVICES = (
    "aggregator",
    "anvil",
    "director",
    "imap-login",
    "imap-urlauth-login",
    "ipc",
    "old-stats",
    "pop3-login",
    "submission-login",
)


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Who the mail and Dovecot's helper processes run as."""

    uid: int
    gid: int
    login_user: str
    internal_user: str
    internal_group: str
    privileged: bool

    @classmethod
    def current(cls) -> ServerIdentity:
        """As root: ``nobody`` owns the mail (Dovecot refuses uid 0), and the package's
        ``dovenull``/``dovecot`` users run the login and internal processes.
        As anyone else: the current user for everything."""
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            return cls(uid, gid, "dovenull", "dovecot", "dovecot", privileged=True)
        me = pwd.getpwuid(os.geteuid())
        try:
            group = grp.getgrgid(me.pw_gid).gr_name
        except KeyError:
            group = str(me.pw_gid)
        return cls(me.pw_uid, me.pw_gid, me.pw_name, me.pw_name, group, privileged=False)


def render_config(
    *,
    instance: str,
    runtime: Path,
    log_path: Path,
    tls_dir: Path,
    identity: ServerIdentity,
    ports: tuple[int, int],
    idle: bool,
    vsz_limit_mb: int,
    extra_conf: str,
) -> str:
    """The config text; ``extra_conf`` comes last, so it can override any setting."""
    capability = "" if idle else f"  imap_capability = {_CAPABILITIES_WITHOUT_IDLE}\n"
    unchroot = (
        ""
        if identity.privileged
        else "".join(f"service {name} {{\n  chroot =\n}}\n" for name in _CHROOTED_SERVICES)
    )
    return f"""\
# Written by testsupport.dovecot: a private throwaway instance.
instance_name = {instance}
base_dir = {runtime / "run"}
state_dir = {runtime / "state"}
log_path = {log_path}
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes

ssl = yes
ssl_cert = <{tls_dir / "server.pem"}
ssl_key = <{tls_dir / "server.key"}

disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests of bad logins stay fast (Dovecot still waits 0.5 s), and do not slow
# down later logins from 127.0.0.1: anvil's growing penalty is off.
auth_failure_delay = 0
auth_verbose = yes
# One passwd-file per user: Dovecot re-reads a changed file at most once a
# second, so a user added to a shared file could not log in at once.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {runtime / "users"}/%u
}}
userdb {{
  driver = static
  args = uid={identity.uid} gid={identity.gid} home={runtime / "mail"}/%u
}}

default_login_user = {identity.login_user}
default_internal_user = {identity.internal_user}
default_internal_group = {identity.internal_group}
first_valid_uid = 1
mail_uid = {identity.uid}
mail_gid = {identity.gid}
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {ports[0]}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ports[1]}
    ssl = yes
  }}
}}
service imap {{
  vsz_limit = {vsz_limit_mb}M
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
{capability}}}
{unchroot}
{extra_conf}
"""
