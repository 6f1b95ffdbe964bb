"""slixmpp (a foreign XMPP library) against meetd's TCP c2s listener:
STARTTLS with meetd's self-signed certificate, SCRAM/PLAIN login of an
internal account on auth.meet.jitsi, XEP-0199 ping and XEP-0030 disco#info to
the server domain, and a wrong password being refused."""

import asyncio
import ssl

import pytest
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from conftest import AUTH_DOMAIN, DOMAIN

USER = f"tester@{AUTH_DOMAIN}"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def account(meetd):
    meetd.user_add(USER, PASSWORD)
    return USER, PASSWORD


def make_client(jid, password, mech):
    xmpp = ClientXMPP(jid, password, sasl_mech=mech)
    xmpp.register_plugin("xep_0030")  # disco
    xmpp.register_plugin("xep_0199")  # ping
    # plain TCP + STARTTLS only (no direct TLS, no cleartext login)
    xmpp.enable_direct_tls = False
    xmpp.enable_starttls = True
    xmpp.enable_plaintext = False
    # meetd uses a self-signed certificate by default
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    xmpp.ssl_context = ctx
    return xmpp


async def login(meetd, jid, password, mech, timeout=15):
    """Connect; return (xmpp, outcome) with outcome 'session_start' or an auth-failure event name."""
    xmpp = make_client(jid, password, mech)
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()
    events = []

    def settle(name):
        def handler(ev=None):
            events.append((name, str(ev)[:500] if ev is not None else None))
            if not outcome.done():
                outcome.set_result(name)
        return handler

    for name in ("session_start", "failed_auth", "failed_all_auth", "no_auth", "connection_failed", "disconnected"):
        xmpp.add_event_handler(name, settle(name))
    xmpp.connect(host="127.0.0.1", port=meetd.c2s_port)
    try:
        result = await asyncio.wait_for(outcome, timeout)
    except asyncio.TimeoutError:
        xmpp.abort()
        raise AssertionError(f"no login outcome within {timeout}s; events: {events}")
    xmpp.events_seen = events
    return xmpp, result


async def close(xmpp):
    try:
        await asyncio.wait_for(xmpp.disconnect(), 5)
    except Exception:  # noqa: BLE001 - best effort
        xmpp.abort()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_login_ping_disco(meetd, account, mech):
    jid, password = account

    async def run():
        xmpp, result = await login(meetd, jid, password, mech)
        try:
            assert result == "session_start", f"{mech} login failed: {xmpp.events_seen}"
            bound = xmpp.boundjid
            assert bound.bare == jid, f"bound JID {bound} should be {jid}/<resource>"
            assert bound.resource, f"bound JID {bound} has no resource"
            # the stream really is encrypted (STARTTLS happened)
            ssl_obj = xmpp.transport.get_extra_info("ssl_object") if xmpp.transport else None
            assert ssl_obj is not None, "login happened without TLS"
            assert ssl_obj.version() in ("TLSv1.2", "TLSv1.3"), ssl_obj.version()

            rtt = await xmpp.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
            assert rtt is not None

            info = await xmpp.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=5, cached=False)
            features = info["disco_info"]["features"]
            assert "urn:xmpp:ping" in features, f"disco#info features: {features}"
        finally:
            await close(xmpp)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_wrong_password_is_refused(meetd, account):
    jid, _ = account

    async def run():
        xmpp, result = await login(meetd, jid, "not the password", "SCRAM-SHA-256")
        try:
            assert result in ("failed_auth", "failed_all_auth"), f"wrong password must fail SASL: {xmpp.events_seen}"
            assert not xmpp.authenticated
        finally:
            await close(xmpp)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_unknown_user_is_refused(meetd, account):
    async def run():
        xmpp, result = await login(meetd, f"nobody@{AUTH_DOMAIN}", "whatever", "SCRAM-SHA-256")
        try:
            assert result in ("failed_auth", "failed_all_auth"), f"unknown user must fail SASL: {xmpp.events_seen}"
        finally:
            await close(xmpp)

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_iq_to_unknown_full_jid_is_service_unavailable(meetd, account):
    jid, password = account

    async def run():
        xmpp, result = await login(meetd, jid, password, "SCRAM-SHA-256")
        try:
            assert result == "session_start", xmpp.events_seen
            with pytest.raises(IqError) as err:
                await xmpp.plugin["xep_0199"].send_ping(jid=f"ghost@{DOMAIN}/nowhere", timeout=5)
            assert err.value.condition == "service-unavailable", str(err.value.iq)
        except IqTimeout:
            raise AssertionError("IQ to an unknown full JID timed out instead of returning an error")
        finally:
            await close(xmpp)

    asyncio.run(run())
