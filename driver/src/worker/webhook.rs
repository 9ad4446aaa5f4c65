//! Alerts as Standard Webhooks (<https://www.standardwebhooks.com>): the
//! body, the `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! headers, and the `whsec_<base64>` signing secret.
//!
//! The signature is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! keyed by the base64-decoded secret. The id is the alert's identifier, the
//! same on every delivery of the alert, so a receiver deduplicates by it.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The event type of a threshold alert.
pub const EVENT_TYPE: &str = "usage.threshold_crossed";

/// A Standard Webhooks signing secret: the bytes of `whsec_<base64>`.
/// Never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl WebhookSecret {
    /// Parse `whsec_<base64>` (the prefix may be left out). The key must be
    /// 24 to 64 bytes, as the specification asks.
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let text = text.trim();
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        let key = base64_decode(encoded)
            .ok_or_else(|| "the alert secret is not whsec_ followed by base64".to_string())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the alert secret's key is {} bytes; it must be 24 to 64 (whsec_ and the base64 of random bytes)",
                key.len()
            ));
        }
        Ok(WebhookSecret(key))
    }

    /// The `webhook-signature` header of `body` sent as message `id` at
    /// `timestamp` (Unix seconds).
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        format!("v1,{}", base64_encode(&mac.finalize().into_bytes()))
    }
}

/// What an alert says.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertData {
    pub tenant_id: String,
    pub metric: String,
    /// The threshold, a percentage of the limit.
    pub threshold: i32,
    /// The threshold in units.
    pub threshold_units: i64,
    /// The count that reached it.
    pub used: i64,
    pub limit: i64,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    /// When the crossing happened (the alert was written).
    pub created_at: DateTime<Utc>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON body of an alert's webhook. The same on every delivery.
pub fn body(alert: &AlertData) -> String {
    serde_json::json!({
        "type": EVENT_TYPE,
        "timestamp": rfc3339(alert.created_at),
        "data": {
            "tenant_id": alert.tenant_id,
            "metric": alert.metric,
            "threshold": alert.threshold,
            "threshold_units": alert.threshold_units,
            "used": alert.used,
            "limit": alert.limit,
            "period_start": alert.period_start.map(rfc3339),
            "period_end": alert.period_end.map(rfc3339),
        }
    })
    .to_string()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; None for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone sixth-bit group cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0x00], "//4A"),
        ];
        for &(bytes, text) in cases {
            assert_eq!(base64_encode(bytes), text);
            assert_eq!(base64_decode(text).as_deref(), Some(bytes), "{text}");
        }
        for bad in ["Z", "Zm9v!", "Zm 9v", "Z===="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn signs_as_the_standardwebhooks_library_does() {
        // From the standardwebhooks Python package 1.1.0:
        // Webhook(secret).sign("msg_1", <1700000000>, '{"a":1}').
        let secret =
            WebhookSecret::parse("whsec_dGFsbHktdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2Q=").unwrap();
        assert_eq!(
            secret.sign("msg_1", 1_700_000_000, r#"{"a":1}"#),
            "v1,771399R8qXDJKty6h3QjLJDDwzo7/ERwIyhoDO3DYtM="
        );
    }

    #[test]
    fn bad_secrets_are_refused_and_never_printed() {
        for bad in ["", "whsec_", "whsec_not base64", "whsec_c2hvcnQ="] {
            assert!(WebhookSecret::parse(bad).is_err(), "{bad}");
        }
        let secret =
            WebhookSecret::parse("whsec_dGFsbHktdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2Q=").unwrap();
        assert!(!format!("{secret:?}").contains("dGFs"));
    }

    #[test]
    fn the_body_says_what_crossed() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let alert = AlertData {
            tenant_id: "acme".into(),
            metric: "messages".into(),
            threshold: 80,
            threshold_units: 80,
            used: 81,
            limit: 100,
            period_start: Some(at),
            period_end: None,
            created_at: at,
        };
        let body: serde_json::Value = serde_json::from_str(&body(&alert)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "usage.threshold_crossed",
                "timestamp": "2026-12-03T14:00:00.000Z",
                "data": {
                    "tenant_id": "acme", "metric": "messages", "threshold": 80,
                    "threshold_units": 80, "used": 81, "limit": 100,
                    "period_start": "2026-12-03T14:00:00.000Z", "period_end": null,
                }
            })
        );
    }
}
