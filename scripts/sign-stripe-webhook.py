# Print a Stripe-Signature header for the body on stdin, signed with the
# secret in STRIPE_WEBHOOK_SECRET, the way Stripe signs its webhooks.
import hashlib
import hmac
import os
import sys
import time

body = sys.stdin.buffer.read()
timestamp = str(int(time.time()))
secret = os.environ["STRIPE_WEBHOOK_SECRET"].split(",")[0].encode()
signature = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
print(f"t={timestamp},v1={signature}")
