#!/usr/bin/env python3
"""A local receiver of tally's threshold alerts, for the demo.

Checks each delivery's Standard Webhooks signature with the signing secret
(environment variable TALLY_ALERT_SECRET, whsec_<base64>), on its own,
without tallyd's code: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">
keyed by the decoded secret, and a timestamp within five minutes. Prints one
line per alert it has not seen before (by webhook-id) and answers 204; a
delivery that does not verify is answered 400.

Usage: TALLY_ALERT_SECRET=whsec_... alert-receiver.py PORT
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

secret = os.environ["TALLY_ALERT_SECRET"]
key = base64.b64decode(secret.removeprefix("whsec_"))
seen = set()


def verified(headers, body):
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, s) for s in offered)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not verified(self.headers, body):
            print("  a delivery with a bad signature: refused", flush=True)
            self.send_response(400)
            self.end_headers()
            return
        message_id = self.headers["webhook-id"]
        if message_id not in seen:
            seen.add(message_id)
            data = json.loads(body)["data"]
            print(
                f"  alert {message_id[:8]}…, signature valid: {data['tenant_id']} reached "
                f"{data['threshold']}% of {data['metric']} ({data['used']}/{data['limit']})",
                flush=True,
            )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
