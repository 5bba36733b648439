"""No body is buffered past its limit: a 400 MB POST to each body-reading route gets 413 and
kiln's peak resident memory stays within a few MB of what it was."""

import socket

import pytest

from conftest import KilnServer, make_repository

HUGE = 400 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bodies")
    s = KilnServer(make_repository(tmp), ["--records", f"sqlite:{tmp / 'records.sqlite'}"])
    yield s
    assert s.stop() == 0


def post_huge(server, path, chunked):
    """Streams up to 400 MB and returns the status line kiln answered with (it answers, and
    stops reading, long before the body is sent) and how much was sent."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode())
    piece = (b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n") if chunked else CHUNK
    sent = 0
    try:
        while sent < HUGE:
            s.sendall(piece)
            sent += len(CHUNK)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    answer = b""
    try:
        while b"\r\n" not in answer:
            more = s.recv(65536)
            if not more:
                break
            answer += more
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        s.close()
    return answer.split(b"\r\n", 1)[0].decode(), sent


@pytest.mark.parametrize(
    "path,chunked",
    [
        ("/v1/feedback", False),
        ("/v1/feedback", True),
        ("/v1/embeddings", False),
        ("/v2/models/fraud/infer", False),
    ],
)
def test_a_400mb_body_is_refused_without_being_held(server, path, chunked):
    before = peak_rss_kb(server.proc.pid)
    status, sent = post_huge(server, path, chunked)
    after = peak_rss_kb(server.proc.pid)
    assert status.split(" ")[1] == "413", (status, sent)
    assert sent < HUGE, "kiln read the whole body before answering"
    assert after - before < 32 * 1024, f"peak RSS grew by {(after - before) // 1024} MB"
