# Verify deliveries (JSON on stdin: {"secret", "deliveries": [{"headers",
# "body"}]}) with the standardwebhooks package: an implementation of the
# Standard Webhooks signature independent of tallyd's. Prints the verified
# payloads as a JSON list; fails on the first delivery that does not verify.
# A copy with its body changed must not verify.
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

given = json.load(sys.stdin)
webhook = Webhook(given["secret"])
verified = []
for delivery in given["deliveries"]:
    verified.append(webhook.verify(delivery["body"], delivery["headers"]))
    try:
        webhook.verify(delivery["body"].replace("threshold", "thresh0ld"), delivery["headers"])
    except WebhookVerificationError:
        pass
    else:
        sys.exit("a changed body verified")
print(json.dumps(verified))
