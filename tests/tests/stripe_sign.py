# Sign PAYLOAD (from the environment) for the Stripe-Signature header with
# the official stripe package: an implementation independent of tallyd's.
import os
import sys

import stripe

print(stripe.WebhookSignature.generate_signature_header(os.environ["PAYLOAD"], sys.argv[1]))
