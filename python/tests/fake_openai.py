"""A small OpenAI-compatible server (chat completions, embeddings) whose answers the tests
script, to inject faults a real server gives only by accident: slow answers, 5xx, 4xx,
dropped connections, malformed JSON. It records what it received and how many requests
were in flight at once. Pipelines' retries, timeouts, breaker and fallbacks are tested
against it over a real socket."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self):
        self.lock = threading.Lock()
        self.script = []  # actions for the next requests, one each; then "ok"
        self.delay = 1.0  # seconds, for "slow"
        self.requests = []  # request bodies received
        self.in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body,
                                          "auth": self.headers.get("authorization")})
                    action = fake.script.pop(0) if fake.script else "ok"
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    fake.answer(self, action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout under test)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self, script=(), delay=1.0):
        # Let answers still sleeping from an earlier test (their client timed out) finish first.
        deadline = time.monotonic() + 10
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.lock:
            self.script = list(script)
            self.delay = delay
            self.requests = []
            self.max_in_flight = 0

    def count(self):
        with self.lock:
            return len(self.requests)

    def answer(self, handler, action, body):
        if action == "slow":
            time.sleep(self.delay)
            action = "ok"
        if action == "drop":
            # Close without a word: the client sees the connection die mid-request.
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        if action.isdigit():
            return self.send(handler, int(action), {"error": {"message": f"scripted {action}"}})
        if action == "malformed":
            return self.send(handler, 200, None, raw=b'{"choices": [ this is not json')
        if handler.path.endswith("/embeddings"):
            texts = body["input"]
            data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.5]} for i, t in enumerate(texts)]
            return self.send(handler, 200, {"object": "list", "data": data, "model": body["model"]})
        prompt = body["messages"][-1]["content"]
        if body.get("response_format", {}).get("type") == "json_object":
            content = json.dumps({"category": "billing" if "charge" in prompt else "other", "confidence": 0.75})
        else:
            content = f"reply to: {prompt}"
        return self.send(handler, 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    def send(self, handler, status, payload, raw=None):
        data = raw if raw is not None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.server.shutdown()
