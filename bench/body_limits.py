#!/usr/bin/env python3
"""A 400 MB POST to each body-reading route of a running kiln (release build): the status,
how much the client got to send before kiln answered, and kiln's peak RSS (VmHWM) before and
after — one markdown row per route.
    .venv/bin/python bench/body_limits.py"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python" / "tests"))
os.environ.setdefault("KILN_BIN", str(ROOT / "target" / "release" / "kiln"))
from conftest import KilnServer, make_repository  # noqa: E402
from test_body_limits import HUGE, peak_rss_kb, post_huge  # noqa: E402

tmp = Path(tempfile.mkdtemp())
server = KilnServer(make_repository(tmp), ["--records", f"sqlite:{tmp / 'records.sqlite'}"])
try:
    print(f"| route | body | answer | sent before the answer | peak RSS before → after |")
    print("|---|---|---|---|---|")
    for path, chunked in [("/v1/feedback", False), ("/v1/feedback", True), ("/v1/embeddings", False),
                          ("/v2/models/fraud/infer", False), ("/v2/models/fraud/infer", True)]:
        before = peak_rss_kb(server.proc.pid)
        status, sent = post_huge(server, path, chunked)
        after = peak_rss_kb(server.proc.pid)
        kind = "chunked" if chunked else "Content-Length: 400 MB"
        print(f"| `POST {path}` | {kind} | {status.split(' ', 1)[1]} | {sent >> 20} MB | "
              f"{before // 1024} → {after // 1024} MB (+{(after - before) // 1024} MB) |")
finally:
    server.stop()
