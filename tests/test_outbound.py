"""The outbound HTTP guard (taskqueue.core.outbound) against real local servers, heartbeat pings
from a real worker, and chat webhook text that cannot ping or link.

The schedule doors (admin form, declarations) and NUL in schedule payloads are in
test_schedule_inputs.py.
"""

from __future__ import annotations

import http.server
import ipaddress
import re
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from taskqueue.core import outbound
from taskqueue.core.outbound import ANY_HOST, AllowList, OutboundRefused, check_url, request
from taskqueue.models import Schedule, Task, TaskStatus
from taskqueue.monitoring import alert_delivery, alerts
from taskqueue.monitoring.alerts import WEBHOOK, Alert, Summary
from taskqueue.schedules import run_now
from tests.conftest import finish_worker, wait_for
from tests.test_alerts import Webhook

HOSTS = "TASKQUEUE['HEARTBEAT_HOSTS']"
PRIVATE_HINT = "set TASKQUEUE['OUTBOUND_ALLOW_PRIVATE'] = True"


class Server:
    """A local HTTP(S) server recording (method, path, Host header) of each request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.redirects: dict[str, str] = {}
        self.bodies: dict[str, bytes] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(("GET", self.path, self.headers["Host"]))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.end_headers()
                    return
                body = server.bodies.get(self.path, b"OK")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


@pytest.fixture
def other_server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


def heartbeat_hosts(*hosts: str) -> AllowList:
    return AllowList.parse(list(hosts), HOSTS)


def private_allowed(allowed: bool = True) -> override_settings:
    return override_settings(TASKQUEUE={**settings.TASKQUEUE, "OUTBOUND_ALLOW_PRIVATE": allowed})


# --- the guard against a real server ----------------------------------------------------------


def test_a_loopback_server_is_refused_by_default_and_reached_when_allowed(server: Server) -> None:
    allowed = heartbeat_hosts("127.0.0.1")
    with pytest.raises(OutboundRefused) as refused:
        request(server.url("/ping?check=1"), allowed)
    assert str(refused.value) == (
        f"host '127.0.0.1' is a loopback address, which taskqueue refuses; {PRIVATE_HINT} "
        "to allow private and loopback addresses"
    )
    assert server.requests == []

    with private_allowed():
        response = request(server.url("/ping?check=1"), allowed)
    assert (response.status, response.ok, response.body) == (200, True, b"OK")
    assert server.requests == [("GET", "/ping?check=1", f"127.0.0.1:{server.port}")]


def test_a_host_not_in_the_allow_list_is_refused_before_any_connection(server: Server) -> None:
    with pytest.raises(OutboundRefused) as refused:
        request(server.url("/ping"), heartbeat_hosts(), allow_private=True)
    assert (
        str(refused.value)
        == f"IP address '127.0.0.1' is not allowed: add '127.0.0.1' to {HOSTS} (now empty)"
    )
    with pytest.raises(OutboundRefused, match=r"add 'localhost' to .*\(now 127\.0\.0\.1\)"):
        request(server.url("/ping", host="localhost"), heartbeat_hosts("127.0.0.1"))
    assert server.requests == []


def test_a_redirect_is_returned_never_followed(server: Server, other_server: Server) -> None:
    server.redirects["/ping"] = other_server.url("/stolen", host="localhost")
    response = request(
        server.url("/ping"), heartbeat_hosts("127.0.0.1", "localhost"), allow_private=True
    )
    assert (response.status, response.ok, response.is_redirect) == (302, False, True)
    assert response.location == other_server.url("/stolen", host="localhost")
    assert server.paths() == ["/ping"]
    assert other_server.requests == []


def test_the_body_read_is_capped(server: Server) -> None:
    server.bodies["/big"] = b"x" * 200_000
    response = request(server.url("/big"), ANY_HOST, allow_private=True, max_body=100)
    assert response.body == b"x" * 100


def test_the_request_goes_to_the_address_that_was_checked(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name answers a harmless address for the check, then the metadata
    # address. The guard must resolve once and connect to what it checked.
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding_resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "monitor.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver)
    response = request(
        server.url("/ping", host="monitor.test"),
        heartbeat_hosts("monitor.test"),
        allow_private=True,
        timeout=2,
    )
    assert response.status == 200
    assert lookups == ["monitor.test"]
    # The server saw the name the URL gave, though the connection went to 127.0.0.1.
    assert server.requests == [("GET", "/ping", f"monitor.test:{server.port}")]
    # Asked again, the name now resolves to the metadata address: refused, not fetched.
    with pytest.raises(OutboundRefused, match=r"resolves to 169\.254\.169\.254, a cloud metadata"):
        request(server.url("/ping", host="monitor.test"), ANY_HOST, allow_private=True)
    assert len(server.requests) == 1


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    command = ["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
    command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_checks_the_certificate_against_the_name_and_sends_it_as_sni(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _certificate(tmp_path, "monitor.test")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    sni: list[str | None] = []
    tls.sni_callback = lambda sock, name, context: sni.append(name)  # type: ignore[assignment]
    secure = Server(tls)
    real_getaddrinfo = socket.getaddrinfo

    def local_names(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("monitor.test", "impostor.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_names)
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        response = request(
            secure.url("/ping", host="monitor.test", scheme="https"),
            ANY_HOST,
            allow_private=True,
            tls_context=trusting,
        )
        assert response.status == 200
        assert sni == ["monitor.test"]
        assert secure.requests == [("GET", "/ping", f"monitor.test:{secure.port}")]
        # Same address, another name: the certificate does not match it.
        with pytest.raises(ssl.SSLCertVerificationError, match=r"impostor\.test"):
            request(
                secure.url("/ping", host="impostor.test", scheme="https"),
                ANY_HOST,
                allow_private=True,
                tls_context=trusting,
            )
        assert len(secure.requests) == 1
    finally:
        secure.close()


# --- addresses and URLs, judged without a connection ------------------------------------------


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("169.254.169.254", "is a cloud metadata service address"),
        ("[fd00:ec2::254]", "is a cloud metadata service address"),
        ("100.100.100.200", "is a cloud metadata service address"),
        ("169.254.1.1", "is a link-local address"),
        ("[fe80::1]", "is a link-local address"),
        ("127.0.0.1", "is a loopback address"),
        ("127.5.6.7", "is a loopback address"),
        ("[::1]", "is a loopback address"),
        ("10.0.0.1", "is a private address"),
        ("172.16.5.4", "is a private address"),
        ("192.168.1.1", "is a private address"),
        ("100.64.0.1", "is a shared (carrier-grade NAT) address"),
        ("[fc00::1]", "is a unique-local address"),
        ("[fd12:3456::1]", "is a unique-local address"),
        ("[::ffff:127.0.0.1]", "is a loopback address (127.0.0.1 inside ::ffff:7f00:1)"),
        ("[::ffff:169.254.169.254]", "is a cloud metadata service address (169.254.169.254"),
        ("[64:ff9b::a9fe:a9fe]", "is a cloud metadata service address (169.254.169.254"),
        ("[2002:a00:1::1]", "is a private address (10.0.0.1 inside 2002:a00:1::1)"),
        ("0.0.0.0", "is the unspecified address"),
        ("[::]", "is the unspecified address"),
        ("224.0.0.1", "is a multicast address"),
        ("[ff02::1]", "is a multicast address"),
        ("240.0.0.1", "is a reserved address"),
        ("255.255.255.255", "is a reserved address"),
    ],
)
def test_metadata_private_and_special_addresses_are_refused(host: str, fragment: str) -> None:
    with pytest.raises(OutboundRefused) as refused:
        check_url(f"http://{host}/latest/meta-data/", ANY_HOST, allow_private=False)
    assert fragment in str(refused.value)
    assert "meta-data" not in str(refused.value)  # the host is named, never the path


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("[fd12:3456::1]", True),
        ("[::ffff:192.168.0.1]", True),
        ("8.8.8.8", True),
        ("[2606:4700:4700::1111]", True),
        ("169.254.169.254", False),
        ("168.63.129.16", False),
        ("169.254.10.10", False),
        ("[::ffff:169.254.169.254]", False),
        ("0.0.0.0", False),
        ("239.1.1.1", False),
    ],
)
def test_allowing_private_addresses_keeps_metadata_and_link_local_refused(
    host: str, allowed: bool
) -> None:
    if allowed:
        target = check_url(f"http://{host}/", ANY_HOST, allow_private=True)
        assert target.addresses == (str(ipaddress.ip_address(host.strip("[]"))),)
    else:
        with pytest.raises(OutboundRefused):
            check_url(f"http://{host}/", ANY_HOST, allow_private=True)


def test_a_public_address_is_allowed_without_any_setting() -> None:
    target = check_url("https://8.8.8.8/ping/abc?x=1", heartbeat_hosts("8.8.8.8"))
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "8.8.8.8",
        443,
        "/ping/abc?x=1",
    )
    assert target.addresses == ("8.8.8.8",)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(OutboundRefused) as refused:
        check_url("http://localhost:8000/ping", heartbeat_hosts("localhost"))
    assert str(refused.value) == (
        "host 'localhost' resolves to 127.0.0.1, a loopback address, which taskqueue refuses; "
        f"{PRIVATE_HINT} to allow private and loopback addresses"
    )


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://2130706433/", "numeric address in a non-standard spelling"),
        ("http://0x7f.0.0.1/", "numeric address in a non-standard spelling"),
        ("http://127.1/", "numeric address in a non-standard spelling"),
        ("http://user:secret@example.com/", "carries credentials before the host 'example.com'"),
        ("http://example.com@127.0.0.1/", "carries credentials before the host '127.0.0.1'"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("gopher://example.com/", "must be an http:// or https:// URL"),
        ("http:///path-only", "has no host"),
        ("http://exa%6dple.com/", "is not a valid host name"),
        ("http://example.com:99999/", "is not a valid URL"),
        ("http://example.com/a\nHost: evil", "contains spaces or control characters"),
        ("http://example.com/\x00", "contains spaces or control characters"),
    ],
)
def test_odd_urls_are_refused_naming_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(OutboundRefused, match=re.escape(fragment)):
        check_url(url, ANY_HOST)


def test_the_allow_list_matches_names_and_wildcards_exactly() -> None:
    allowed = heartbeat_hosts("hc-ping.com", "*.example.com", "Monitor.Example.ORG.", "[::1]")
    for host in ("hc-ping.com", "a.example.com", "b.a.example.com", "monitor.example.org", "::1"):
        assert allowed.allows(host), host
    for host in (
        "example.com",
        "evilexample.com",
        "hc-ping.com.evil.net",
        "127.0.0.1",
        "x.hc-ping.com",
    ):
        assert not allowed.allows(host), host
    # Hosts in URLs are compared in the same normal form (case, trailing dot).
    assert allowed.allows(outbound.parse_url("http://MONITOR.Example.org.:8/ping").host)


def test_allow_list_settings_are_checked_entry_by_entry() -> None:
    assert outbound.allow_list_problems(["hc-ping.com", "*.example.com", "10.0.0.1"], HOSTS) == []
    problems = outbound.allow_list_problems(
        ["https://hc-ping.com", "hc-ping.com:443", "*", "*.10.0.0.1", "a/b", "", 5], HOSTS
    )
    assert len(problems) == 7
    assert problems[0].startswith(f"{HOSTS} entry 'https://hc-ping.com' is not a host name")
    assert outbound.allow_list_problems("hc-ping.com", HOSTS) == [
        f"{HOSTS} must be a list of host names ('hc-ping.com', '*.example.com', an IP "
        "address), got str"
    ]


# --- chat webhook text --------------------------------------------------------------------


def hostile_alert(**fields: Any) -> Alert:
    values: dict[str, Any] = {
        "channel": WEBHOOK,
        "event": "dead_lettered",
        "task_type": "<!channel>",
        "queue": "<@U123>",
        "task_id": str(uuid.uuid4()),
        "attempt": 3,
        "max_attempts": 3,
        "error_type": "<https://evil.example|click here>",
        "message": "R&D says <!here> to @everyone and a@b.example",
    }
    return Alert(**{**values, **fields})


def test_webhook_text_escapes_chat_control_sequences_from_task_data() -> None:
    alert = hostile_alert()
    summary = Summary(
        "dead_lettered",
        3,
        None,
        [{"label": "<!everyone> in <https://evil.example|x>", "count": 2, "task_id": ""}],
    )
    text = alert_delivery.webhook_text(alert, summary)
    assert "<" not in text and ">" not in text
    assert f"[taskqueue] task {alert.task_id} (&lt;!channel&gt;, queue &lt;@\u200bU123&gt;)" in text
    assert "dead-lettered after attempt 3/3: &lt;https://evil.example|click here&gt;: " in text
    assert "R&amp;D says &lt;!here&gt; to @\u200beveryone and a@\u200bb.example" in text
    assert (
        "...and 3 more dead letters: 2 x &lt;!everyone&gt; in &lt;https://evil.example|x&gt;"
        in text
    )
    # The admin path (built here, not task data) is intact.
    assert f"(admin: /admin/taskqueue/task/{alert.task_id}/change/)" in text
    # Other events carry task data in their message and label.
    circuit = hostile_alert(event="circuit_opened", message="", task_type="<!channel>")
    assert alert_delivery.webhook_text(circuit, None) == "[taskqueue] circuit of &lt;!channel&gt;"
    late = hostile_alert(event="schedule_late", message="schedule '<@U1|x>' is late")
    assert (
        alert_delivery.webhook_text(late, None)
        == "[taskqueue] schedule '&lt;@\u200bU1|x&gt;' is late"
    )
    # "&" is escaped once, so text that already looks escaped shows as written.
    assert alert_delivery.escape_chat_text("&lt;!channel&gt;") == "&amp;lt;!channel&amp;gt;"


def test_the_mail_alert_stays_plain_text() -> None:
    alert = hostile_alert(channel=alerts.EMAIL)
    subject, body = alert_delivery.email_content(alert, None)
    assert "<!channel>" in subject
    assert "Error:     <https://evil.example|click here>: R&D says <!here> to @everyone" in body


@pytest.mark.django_db
def test_the_posted_json_carries_the_escaped_text() -> None:
    webhook = Webhook()
    try:
        with override_settings(
            TASKQUEUE={**settings.TASKQUEUE, "ALERTS": {"WEBHOOK_URL": webhook.url}}
        ):
            alert = hostile_alert()
            assert alerts.deliver(WEBHOOK, alert, None) is True
        (body,) = webhook.bodies
        assert body["content_type"] == "application/json"
        assert body["json"] == {"text": alert_delivery.webhook_text(alert, None)}
        text = body["json"]["text"]
        assert "<" not in text and ">" not in text
        assert "&lt;!channel&gt;" in text and "&lt;https://evil.example|click here&gt;" in text
    finally:
        webhook.close()


# --- heartbeat pings from a real worker -------------------------------------------------------


def outbound_env(hosts: str, allow_private: bool) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.outbound_settings",
        "TASKQUEUE_TEST_HEARTBEAT_HOSTS": hosts,
        "TASKQUEUE_TEST_ALLOW_PRIVATE": "1" if allow_private else "0",
    }


def monitored(name: str, url: str) -> Task:
    schedule = Schedule.objects.create(
        name=name, task_type="schedule_tick", cron="0 3 * * *", heartbeat_url=url
    )
    return run_now(schedule)


def run_burst_worker(start_worker: Any, env: dict[str, str], tasks: list[Task]) -> str:
    worker = start_worker("--burst", extra_env=env)
    code, _, log = finish_worker(worker, timeout=90)
    assert code == 0, log
    done = Task.objects.filter(id__in=[task.id for task in tasks], status=TaskStatus.COMPLETED)
    assert done.count() == len(tasks), log
    return log


@pytest.mark.django_db(transaction=True)
def test_a_worker_pings_an_allowed_url_and_never_follows_a_redirect(
    start_worker: Any, server: Server, other_server: Server
) -> None:
    server.redirects["/moved/secret-2"] = other_server.url("/stolen")
    tasks = [
        monitored("monitored", server.url("/ping/secret-1")),
        monitored("moved", server.url("/moved/secret-2")),
    ]
    log = run_burst_worker(start_worker, outbound_env("127.0.0.1", allow_private=True), tasks)
    wait_for(lambda: len(server.requests) == 2, timeout=10, message="both heartbeat pings")
    assert sorted(server.paths()) == ["/moved/secret-2", "/ping/secret-1"]
    assert other_server.requests == []
    assert (
        f"heartbeat ping to 127.0.0.1:{server.port} failed: it answered 302 Found "
        "(redirects are not followed)"
    ) in log
    assert "secret" not in log  # the host is logged, never the URL


@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_nothing_to_a_refused_url_and_logs_the_host(
    start_worker: Any, server: Server
) -> None:
    tasks = [
        monitored("loopback", server.url("/ping/secret-3")),
        monitored("unlisted", server.url("/ping/secret-4", host="localhost")),
        monitored("metadata", "http://169.254.169.254/latest/meta-data/secret-5"),
    ]
    log = run_burst_worker(start_worker, outbound_env("127.0.0.1", allow_private=False), tasks)
    assert (
        f"heartbeat ping to 127.0.0.1:{server.port} refused: host '127.0.0.1' is a loopback "
        "address, which taskqueue refuses"
    ) in log
    assert (
        f"heartbeat ping to localhost:{server.port} refused: host 'localhost' is not allowed: "
        f"add 'localhost' to {HOSTS}"
    ) in log
    assert (
        "heartbeat ping to 169.254.169.254 refused: IP address '169.254.169.254' is not allowed"
    ) in log
    assert server.requests == []
    assert "secret" not in log
