"""A small OpenAI-compatible chat server on loopback, for testing the LLM judge for real over HTTP.

Behaviour, decided from the request text:
* single grading: "Rating: [[9]]" when the answer contains GOOD, "[[2]]" when it contains BAD, and an
  unparsable reply when it contains GARBLE;
* pairwise: prefers the answer containing GOOD; with no GOOD answer it always says "[[A]]" (a pure position
  bias, which judging both orders must cancel into a tie); GARBLE anywhere gives an unparsable reply;
* ``faults``: one per request, in the order the requests arrive; the server behaves once they are used up
  (a test may append more): ``http_500`` (also the first ``fail_first`` requests), ``http_429`` (rate
  limited), ``http_400`` (a refused request, not worth retrying), ``not_json`` (a 200 with an
  HTML body), ``cut_short`` (a 200 whose connection closes halfway through the body's Content-Length),
  ``unparsable`` (a well-formed reply with no rating or verdict) and ``empty`` (a well-formed, empty reply);
  an error status carries ``Retry-After-Ms: 10``, which ``openai`` honours, so that its retries do not slow the tests;
* ``respond``: a test's own judge, called with each request's messages; the reply it returns (a string) is sent
  instead of the behaviour above (``None``: the behaviour above);
* ``bodies``, ``authorizations``: every request's JSON body and ``Authorization`` header, in arrival order, for
  a test to see what the judge sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


FAULTS = ("http_500", "http_429", "http_400", "not_json", "cut_short", "unparsable", "empty")
STATUS = {"http_500": 500, "http_429": 429, "http_400": 400}
CANNED = {"unparsable": "I would rather not say.", "empty": ""}


class JudgeServer:
    def __init__(
        self,
        fail_first: int = 0,
        faults: Sequence[str] = (),
        respond: Callable[[list[dict[str, str]]], str | None] | None = None,
    ) -> None:
        assert set(faults) <= set(FAULTS), faults
        self.faults = deque(["http_500"] * fail_first + list(faults))
        self.respond = respond
        self.requests = 0
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    server.requests += 1
                    server.bodies.append(body)
                    server.authorizations.append(self.headers.get("Authorization"))
                    fault = server.faults.popleft() if server.faults else None
                if fault in STATUS:
                    self.send_response(STATUS[fault])
                    self.send_header("Retry-After-Ms", "10")
                    self.end_headers()
                    self.wfile.write(b'{"error": "overloaded"}')
                    return
                if fault == "not_json":
                    self.answer(b"<html><body>502 Bad Gateway</body></html>", "text/html")
                    return
                if fault in CANNED:
                    reply = CANNED[fault]
                else:
                    scripted = server.respond(body["messages"]) if server.respond else None
                    reply = server.reply(body["messages"][-1]["content"]) if scripted is None else scripted
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.answer(payload, "application/json", cut_short=fault == "cut_short")

            def answer(self, payload: bytes, content_type: str, cut_short: bool = False) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                # HTTP/1.0: the connection closes when the handler returns, short of the announced length
                self.wfile.write(payload[: len(payload) // 2] if cut_short else payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def reply(text: str) -> str:
        if "GARBLE" in text:
            return "I would rather not say."
        if "[Answer A]" in text:
            first = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S).group(1)
            second = re.search(r"\[Answer B\]\n(.*?)\n\nFirst compare", text, re.S).group(1)
            if "GOOD" in first and "GOOD" not in second:
                return "A is right.\n[[A]]"
            if "GOOD" in second and "GOOD" not in first:
                return "B is right.\n[[B]]"
            return "Hard to say, I pick the first.\n[[A]]"
        answer = re.search(r"\[Assistant answer\]\n(.*?)\n\nFirst explain", text, re.S).group(1)
        return "Correct and clear.\nRating: [[9]]" if "GOOD" in answer else "Wrong.\nRating: [[2]]"

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
