"""XEP-0114 components (slixmpp's ComponentXMPP), direct TLS c2s, and the connection,
stanza-rate and BOSH-body limits, against a meetd started with a test configuration."""

import asyncio
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
import slixmpp
from slixmpp.componentxmpp import ComponentXMPP

from conftest import AUTH_DOMAIN, Meetd, free_port

COMPONENT = "echo.meet.jitsi"
SECRET = "s3cret-component"


@pytest.fixture(scope="module")
def limited():
    tls_port = free_port()
    config = f"""
[listen]
c2s_tls = "127.0.0.1:{tls_port}"

[limits]
max_sessions_per_ip = 4
stanza_rate_per_second = 5
stanza_burst = 10
bosh_max_body_bytes = 4096

[[components]]
domain = "{COMPONENT}"
secret = "{SECRET}"
"""
    server = Meetd(config=config)
    server.tls_port = tls_port
    server.failed = False
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.failed:
            print(f"\n--- meetd log ---\n{server.log_tail()}")


class Echo(ComponentXMPP):
    def __init__(self, port, secret=SECRET):
        super().__init__(COMPONENT, secret, "127.0.0.1", port)
        self.up = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.up.set())
        self.add_event_handler("message", self.on_message)

    def on_message(self, msg):
        msg.reply("echo:" + msg["body"]).send()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.ready = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.errors = []
        self.add_event_handler("session_start", lambda _: self.ready.set())
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("stream_error", lambda e: self.errors.append(e["condition"]))


def test_component_routes_both_ways(limited):
    limited.user_add(f"alice@{AUTH_DOMAIN}", "alicepw")

    async def go():
        comp = Echo(limited.component_port)
        comp.connect()
        await asyncio.wait_for(comp.up.wait(), 10)
        c = Client(f"alice@{AUTH_DOMAIN}", "alicepw")
        c.connect(host="127.0.0.1", port=limited.c2s_port)
        await asyncio.wait_for(c.ready.wait(), 10)
        c.send_message(mto=COMPONENT, mbody="ping", mtype="chat")
        m = await asyncio.wait_for(c.inbox.get(), 10)
        assert m["body"] == "echo:ping"
        assert str(m["from"]).startswith(COMPONENT)
        c.disconnect()
        comp.disconnect()
        await asyncio.sleep(0.3)

    asyncio.run(go())


def raw_component(port, digest):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{COMPONENT}'>".encode())
        time.sleep(0.2)
        s.recv(4096)
        s.sendall(f"<handshake>{digest}</handshake>".encode())
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b"</stream:stream>" not in data and b"<handshake" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")


def test_component_with_wrong_secret_is_refused(limited):
    answer = raw_component(limited.component_port, "0" * 40)
    assert "not-authorized" in answer, answer


def test_direct_tls_offers_scram(limited):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", limited.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{AUTH_DOMAIN}' version='1.0'>".encode())
            data = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and b"</stream:features>" not in data:
                data += s.recv(4096)
    text = data.decode()
    assert "SCRAM-SHA-256" in text and "PLAIN" in text and "starttls" not in text, text


def test_sessions_per_ip_limit(limited):
    socks = []
    try:
        answers = []
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", limited.c2s_port), timeout=5)
            socks.append(s)
            s.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='meet.jitsi' version='1.0'>")
            time.sleep(0.1)
            answers.append(s.recv(4096).decode(errors="replace"))
        refused = [a for a in answers if "policy-violation" in a]
        # Other tests in this module may still hold a connection or two; at most 4 get in.
        assert refused, answers
        assert sum("stream:features" in a for a in answers) <= 4
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)


def test_stanza_flood_is_a_policy_violation(limited):
    limited.user_add(f"flood@{AUTH_DOMAIN}", "floodpw")

    async def go():
        c = Client(f"flood@{AUTH_DOMAIN}", "floodpw")
        c.connect(host="127.0.0.1", port=limited.c2s_port)
        await asyncio.wait_for(c.ready.wait(), 10)
        # Far beyond the burst: the server closes while much of this is still in flight, and
        # its stream error must still arrive (no reset from unread input).
        for i in range(200):
            c.send_message(mto=f"nobody@{AUTH_DOMAIN}/x", mbody=str(i), mtype="chat")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "policy-violation" not in c.errors:
            await asyncio.sleep(0.05)
        assert "policy-violation" in c.errors, c.errors
        c.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(go())


def test_bosh_body_limit(limited):
    body = "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='meet.jitsi' wait='60' hold='1'>" + ("x" * 5000) + "</body>"
    req = urllib.request.Request(f"http://127.0.0.1:{limited.http_port}/http-bind", data=body.encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 413
