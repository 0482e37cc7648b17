"""Is a provider email really from the provider?  DKIM verified here, or the receiving
server's Authentication-Results; the step between parse and store.

Anyone can send an email whose From header reads ``smsin@agiletelecom.com``:
the parser (:mod:`inbound_mail.parse.message`) only says who the email *claims* to be
from.  :class:`Verifier` decides whether that claim holds, for every
:class:`~inbound_mail.models.SmsRecord` the parser made, before it is stored.
The email is authentic when either holds:

DKIM, verified here
    A DKIM-Signature (RFC 6376) that verifies (dkimpy, with the key looked up
    through dnspython), whose ``d=`` is one of ``dkim_domains`` or a subdomain
    of one, aligned with the From domain (relaxed alignment, RFC 7489: both
    under the same configured domain), that signs the From header and has no
    ``l=`` body length (which would let anyone append text).  Signatures of
    other domains are not even looked up: their DNS is the sender's.  A key
    that does not exist (NXDOMAIN, no TXT: old mail after a key rotation) is a
    failure of DKIM only.  A DNS timeout or SERVFAIL is no answer at all: the
    verdict is *temporary* and the email waits, unacknowledged, for a later pass.

The receiving server's Authentication-Results (RFC 8601, parsed with authres)
    Only the first run of consecutive ``Authentication-Results`` headers from
    the top of the message counts: the operator's server prepends its own, so
    they sit above anything the sender wrote; a header lower down never counts,
    whatever its authserv-id.  In that run, only headers whose authserv-id is in
    ``authserv_ids`` are trusted (none by default).  A trusted ``dkim=pass``
    with an aligned ``header.d`` (or ``header.i``), or ``dmarc=pass`` with
    ``header.from`` the From domain (itself a provider domain), is a pass;
    a trusted ``dmarc`` result other than ``pass`` or ``none`` vetoes every
    pass of the run (a forged header glued right below the server's own must
    not outvote it).  This is what survives key rotation: ``backfill`` and
    ``import`` of old mail rely on it.

What happens then depends on ``authenticate`` (``[parse]``, or the account):
``require`` turns an email that is not authentic into a reject with code
``unauthenticated`` and the evidence; ``report`` stores and delivers it with
``authenticated = false`` and the reason; ``off`` checks nothing (records
carry ``authenticated = None``).  The Authentication-Results check needs no
DNS, so it runs first and a pass there skips the DKIM lookups.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, Any, Literal

from ..config.model import (
    DEFAULT_DKIM_DOMAINS,
    AccountConfig,
    AuthMode,
    ParseConfig,
    parse_dns_server,
)
from ..errors import DnsTemporaryError
from ..models import ParseOutcome, Rejected, SmsRecord

if TYPE_CHECKING:
    import dns.resolver

__all__ = [
    "AUTH_MODES",
    "Deferred",
    "KeyResolver",
    "TrustPolicy",
    "Verdict",
    "Verifier",
]

AUTH_MODES: tuple[AuthMode, ...] = ("require", "report", "off")

# A provider email carries one or two signatures; more is noise or an attack
# trying to make us do many DNS lookups and RSA checks for one email.
MAX_SIGNATURES = 5
# Cache bounds: a key is looked up at most once per TTL (kept within these), an
# absent key once a minute, and the cache never grows past MAX_CACHED names.
MIN_TTL = 30.0
MAX_TTL = 3600.0
NEGATIVE_TTL = 60.0
MAX_CACHED = 1000


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What counts as the provider: ``[parse]`` settings, or an account's overrides."""

    mode: AuthMode = "require"
    authserv_ids: tuple[str, ...] = ()
    dkim_domains: tuple[str, ...] = DEFAULT_DKIM_DOMAINS

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "authserv_ids", tuple(a.strip().lower() for a in self.authserv_ids)
        )
        object.__setattr__(
            self, "dkim_domains", tuple(d.strip().lower().strip(".") for d in self.dkim_domains)
        )

    @classmethod
    def from_config(cls, parse: ParseConfig, account: AccountConfig | None = None) -> TrustPolicy:
        """``[parse]``'s policy, or an account's (which defaults to ``[parse]``'s)."""
        source = account if account is not None else parse
        return cls(source.authenticate, source.authserv_ids, source.dkim_domains)

    def organisation(self, domain: str) -> str | None:
        """The configured domain that ``domain`` is, or is under; None if none."""
        domain = domain.strip().lower().rstrip(".")
        for base in self.dkim_domains:
            if domain == base or domain.endswith("." + base):
                return base
        return None

    def aligned(self, signing_domain: str, from_domain: str) -> bool:
        """Relaxed alignment (RFC 7489) with the configured domains as the
        organisational domains: both under the same one."""
        base = self.organisation(signing_domain)
        return base is not None and self.organisation(from_domain) == base


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the checks said about one email.

    ``reason`` is one line (stored with the record or the reject); ``evidence``
    has one line per check: what was checked and what it said.
    """

    authentic: bool
    temporary: bool
    reason: str
    evidence: str
    dkim: Literal["pass", "fail", "none", "temperror", "skipped"] = "none"
    authentication_results: Literal["pass", "fail", "none"] = "none"


@dataclass(frozen=True, slots=True)
class Deferred:
    """A provider email whose verdict could not be reached now (DNS timeout or
    SERVFAIL): store nothing, acknowledge nothing, try it again on a later pass."""

    reason: str


class KeyResolver:
    """TXT lookups for DKIM keys through dnspython, with a timeout and a TTL-bounded cache.

    ``servers``: ``"ADDRESS[:PORT]"`` strings; empty means the system's resolver
    (``/etc/resolv.conf``).  Thread-safe.  :meth:`txt` is dkimpy's ``dnsfunc``:
    bytes of the record, None when the name or record does not exist, and
    :class:`DnsTemporaryError` on a timeout or a server failure.
    """

    def __init__(
        self,
        servers: Sequence[str] = (),
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = tuple(servers)
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, bytes | None]] = {}
        self._resolver: dns.resolver.Resolver | None = None
        self.lookups = 0  # queries that went to the network (not the cache)

    @classmethod
    def from_config(cls, parse: ParseConfig) -> KeyResolver:
        return cls(parse.dns_servers, timeout=parse.dns_timeout)

    def _get_resolver(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            # dnspython (and dkimpy, authres below) load on the first check: ``import``,
            # ``backfill`` and ``--help`` never pay for them when no account authenticates.
            import dns.nameserver
            import dns.resolver

            if self.servers:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(*parse_dns_server(s)) for s in self.servers
                ]
            else:
                try:
                    resolver = dns.resolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise DnsTemporaryError(
                        "no system DNS resolver (/etc/resolv.conf): set [parse] dns_servers"
                    ) from exc
            # A 2048-bit key does not fit a 512-byte answer: ask for EDNS0 sizes.
            resolver.use_edns(0, 0, 1232)
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            resolver.cache = None  # ours bounds the TTL and counts lookups
            self._resolver = resolver
        return self._resolver

    def txt(self, name: bytes | str, timeout: float | None = None) -> bytes | None:
        """The first TXT record of ``name`` (its strings joined), or None."""
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).lower()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        value, ttl = self._lookup(key, self.timeout if timeout is None else timeout)
        with self._lock:
            self._cache.pop(key, None)
            while len(self._cache) >= MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (self._clock() + ttl, value)
        return value

    def _lookup(self, name: str, timeout: float) -> tuple[bytes | None, float]:
        import dns.exception
        import dns.resolver

        resolver = self._get_resolver()
        self.lookups += 1
        try:
            answer = resolver.resolve(name, "TXT", lifetime=min(timeout, self.timeout))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return None, NEGATIVE_TTL
        except dns.resolver.NoNameservers as exc:  # SERVFAIL / REFUSED from every server
            raise DnsTemporaryError(f"DNS servers failed for {name}: {_short(exc)}") from exc
        except dns.exception.Timeout as exc:
            raise DnsTemporaryError(f"DNS lookup of {name} timed out after {timeout:g}s") from exc
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"DNS lookup of {name} failed: {_short(exc)}") from exc
        ttl = min(max(float(answer.rrset.ttl if answer.rrset else 0), MIN_TTL), MAX_TTL)
        for record in answer:
            return b"".join(record.strings), ttl
        return None, NEGATIVE_TTL


class Verifier:
    """Applies a :class:`TrustPolicy` to parsed provider emails (see the module docstring)."""

    def __init__(self, policy: TrustPolicy, resolver: KeyResolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver or KeyResolver()

    @classmethod
    def from_config(
        cls,
        parse: ParseConfig,
        account: AccountConfig | None = None,
        resolver: KeyResolver | None = None,
    ) -> Verifier:
        """The verifier for ``account`` (or for ``[parse]``, e.g. ``import``)."""
        return cls(
            TrustPolicy.from_config(parse, account), resolver or KeyResolver.from_config(parse)
        )

    def check(self, raw: bytes, outcome: ParseOutcome) -> ParseOutcome | Deferred:
        """The outcome to store for ``raw``: the record marked, a reject, or Deferred."""
        if self.policy.mode == "off" or not isinstance(outcome, SmsRecord):
            return outcome
        try:
            verdict = self.assess(raw, outcome.sender or "")
        except Exception as exc:  # a bug here must cost one email (not proved), never the pass
            why = f"internal error in the authenticity check: {type(exc).__name__}: {_short(exc)}"
            verdict = Verdict(False, False, why, why)
        if verdict.temporary:
            return Deferred(reason=verdict.reason)
        if verdict.authentic or self.policy.mode == "report":
            return replace(outcome, authenticated=verdict.authentic, auth_reason=verdict.reason)
        return Rejected(
            reason=f"unauthenticated: {verdict.reason}",
            code="unauthenticated",
            evidence=verdict.evidence,
            sender=outcome.sender,
            message_id=outcome.message_id,
            subject=outcome.subject,
        )

    def assess(self, raw: bytes, sender: str, *, full: bool = False) -> Verdict:
        """The verdict on ``raw`` claimed to be from ``sender``.  With ``full``, DKIM is
        checked even when Authentication-Results already passed (for ``check``)."""
        raw = bytes(raw)
        from_domain = sender.rpartition("@")[2].lower()
        try:
            headers = BytesHeaderParser(policy=compat32).parsebytes(raw).items()
        except Exception:  # never expected: compat32 header parsing does not raise
            headers = []
        ar_result, ar_lines = self._authentication_results(headers, from_domain)
        lines = list(ar_lines)
        if ar_result == "pass" and not full:
            lines.append("DKIM: not checked (Authentication-Results passed)")
            return Verdict(
                True, False, _reason(ar_lines, "pass"), "\n".join(lines), "skipped", "pass"
            )
        dkim_result, dkim_lines = self._dkim(raw, headers, from_domain)
        lines = dkim_lines + lines
        evidence = "\n".join(lines)
        if ar_result == "pass":
            return Verdict(True, False, _reason(ar_lines, "pass"), evidence, dkim_result, "pass")
        if dkim_result == "pass":
            return Verdict(True, False, _reason(dkim_lines, "pass"), evidence, "pass", ar_result)
        if dkim_result == "temperror":
            reason = "DKIM key lookup failed for now: " + _reason(dkim_lines, "temperror")
            return Verdict(False, True, reason, evidence, "temperror", ar_result)
        reason = (
            f"no valid DKIM signature of {', '.join(self.policy.dkim_domains)} aligned with "
            f"the From domain {from_domain or '?'}, and no trusted Authentication-Results pass "
            f"({dkim_lines[0][:200]}; {ar_lines[-1][:200]})"
        )
        return Verdict(False, False, reason, evidence, dkim_result, ar_result)

    # -- DKIM ----------------------------------------------------------------------------------
    def _dkim(
        self, raw: bytes, headers: list[tuple[str, Any]], from_domain: str
    ) -> tuple[Literal["pass", "fail", "none", "temperror"], list[str]]:
        count = sum(1 for name, _ in headers if name.lower() == "dkim-signature")
        if count == 0:
            return "none", ["DKIM: none (no DKIM-Signature header)"]
        lines: list[str] = []
        temporary = False
        for index in range(min(count, MAX_SIGNATURES)):
            result, line = self._one_signature(raw, index, from_domain)
            lines.append(line)
            if result == "pass":
                return "pass", lines
            temporary = temporary or result == "temperror"
        if count > MAX_SIGNATURES:
            lines.append(f"DKIM: {count - MAX_SIGNATURES} more signatures not checked")
        return ("temperror" if temporary else "fail"), lines

    def _one_signature(self, raw: bytes, index: int, from_domain: str) -> tuple[str, str]:
        import dkim

        try:
            verifier = dkim.DKIM(raw, logger=_QUIET, timeout=self.resolver.timeout)
            prep = verifier.verify_headerprep(index)
        except Exception as exc:  # dkimpy on hostile input: a failed check, never a crash
            return "fail", f"DKIM: fail (signature {index + 1} is malformed: {_short(exc)})"
        if not prep:
            return "fail", f"DKIM: fail (signature {index + 1} cannot be read)"
        fields, signed, _ = prep
        domain = _text(fields.get(b"d", b"")).lower()
        selector = _text(fields.get(b"s", b""))
        where = f"d={domain} s={selector}"
        if self.policy.organisation(domain) is None:
            # Not looked up: that DNS belongs to whoever wrote the signature.
            return "fail", f"DKIM: fail {where} (not a provider domain; not checked)"
        if not self.policy.aligned(domain, from_domain):
            return "fail", f"DKIM: fail {where} (not aligned with the From domain {from_domain})"
        if b"from" not in signed:
            return "fail", f"DKIM: fail {where} (the From header is not signed)"
        if b"l" in fields:
            return "fail", f"DKIM: fail {where} (l= body length: text may be appended)"
        try:
            valid = verifier.verify(index, dnsfunc=self.resolver.txt)
        except DnsTemporaryError as exc:
            return "temperror", f"DKIM: temperror {where} ({exc})"
        except dkim.DKIMException as exc:
            return "fail", f"DKIM: fail {where} ({_short(exc)})"
        except Exception as exc:  # dkimpy on hostile input: a failed check, never a crash
            return "fail", f"DKIM: fail {where} ({type(exc).__name__}: {_short(exc)})"
        if not valid:
            if self.resolver.txt(f"{selector}._domainkey.{domain}.") is None:  # cached: no query
                return "fail", f"DKIM: fail {where} (no key in DNS: NXDOMAIN or no TXT record)"
            return "fail", f"DKIM: fail {where} (signature did not verify)"
        return "pass", f"DKIM: pass {where}"

    # -- Authentication-Results -----------------------------------------------------------------
    def _authentication_results(
        self, headers: list[tuple[str, Any]], from_domain: str
    ) -> tuple[Literal["pass", "fail", "none"], list[str]]:
        block, below = _top_block(headers)
        if not block and not below:
            return "none", ["Authentication-Results: none"]
        lines: list[str] = []
        passes: list[str] = []
        vetoes: list[str] = []
        trusted_any = False
        for value in block:
            parsed = _parse_ar(value)
            if parsed is None:
                lines.append("Authentication-Results: ignored (cannot be parsed)")
                continue
            authserv_id = str(parsed.authserv_id or "").lower()
            if authserv_id not in self.policy.authserv_ids:
                lines.append(
                    f"Authentication-Results: ignored ({authserv_id} is not in authserv_ids)"
                )
                continue
            trusted_any = True
            said = [_describe_result(r) for r in parsed.results]
            lines.append(
                f"Authentication-Results: trusted {authserv_id}: {'; '.join(said) or 'none'}"
            )
            for result in parsed.results:
                verdict = self._ar_result(result, from_domain)
                if verdict == "pass":
                    passes.append(f"{authserv_id}: {_describe_result(result)}")
                elif verdict == "veto":
                    vetoes.append(f"{authserv_id}: {_describe_result(result)}")
        if below:
            lines.append(
                f"Authentication-Results: {below} lower in the message ignored (not in the "
                "top block the receiving server writes)"
            )
        if vetoes:
            lines.append(f"Authentication-Results: fail ({'; '.join(vetoes)} vetoes any pass)")
            return "fail", lines
        if passes:
            lines.append(f"Authentication-Results: pass ({passes[0]})")
            return "pass", lines
        return ("fail" if trusted_any else "none"), lines

    def _ar_result(self, result: Any, from_domain: str) -> Literal["pass", "veto", "none"]:
        method = str(getattr(result, "method", "")).lower()
        outcome = str(getattr(result, "result", "")).lower()
        props = {
            f"{p.type}.{p.name}".lower(): str(p.value).lower()
            for p in getattr(result, "properties", [])
        }
        if method == "dmarc":
            header_from = props.get("header.from", "")
            ours = header_from == from_domain and self.policy.organisation(from_domain) is not None
            if outcome == "pass" and ours:
                return "pass"
            return "veto" if outcome not in ("pass", "none") else "none"
        if method == "dkim" and outcome == "pass":
            domain = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
            if domain and self.policy.aligned(domain, from_domain):
                return "pass"
        return "none"


def _top_block(headers: list[tuple[str, Any]]) -> tuple[list[str], int]:
    """The values of the first run of consecutive Authentication-Results headers, and
    how many such headers come after it (never trusted)."""
    block: list[str] = []
    below = 0
    state = "before"
    for name, value in headers:
        is_ar = name.strip().lower() == "authentication-results"
        if state == "before" and is_ar:
            state = "in"
        elif state == "in" and not is_ar:
            state = "after"
        if is_ar and state == "in":
            block.append(_unfold(value))
        elif is_ar:
            below += 1
    return block, below


def _parse_ar(value: str) -> Any:
    import authres

    try:
        return authres.AuthenticationResultsHeader.parse_value(value)
    except Exception:  # authres raises its own SyntaxError and others on hostile input
        return None


def _describe_result(result: Any) -> str:
    props = " ".join(f"{p.type}.{p.name}={p.value}" for p in getattr(result, "properties", []))
    return f"{result.method}={result.result}" + (f" {props}" if props else "")


def _reason(lines: list[str], result: str) -> str:
    for line in lines:
        if f": {result}" in line:
            return line
    return lines[-1] if lines else result


def _unfold(value: Any) -> str:
    return re.sub(r"\r?\n[ \t]*", " ", str(value)).strip()


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


class _Quiet:
    """dkimpy logs every failed check at ERROR; the verdict already carries it."""

    def debug(self, *args: Any, **kwargs: Any) -> None: ...
    def info(self, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, *args: Any, **kwargs: Any) -> None: ...
    def error(self, *args: Any, **kwargs: Any) -> None: ...


_QUIET = _Quiet()
