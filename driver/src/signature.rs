//! Webhook signatures: Stripe's and Paddle's HMAC-SHA256 schemes, checked on
//! the raw body before anything parses it, in constant time, within a
//! timestamp tolerance. Several secrets may be configured at once, so a
//! secret can be rotated without dropping events.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a signature's timestamp may be from now, in seconds (Stripe's
/// default, and Paddle's recommendation).
pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is more than {TOLERANCE_SECONDS} s from now")]
    Stale,
    #[error("no signature matches the body")]
    Mismatch,
}

/// Webhook signing secrets. Never printed.
#[derive(Clone, Default)]
pub struct Secrets(Vec<Vec<u8>>);

impl Secrets {
    /// Secrets from a comma-separated list (the current one and, while
    /// rotating, the previous ones). Blank entries are ignored.
    pub fn parse(list: &str) -> Secrets {
        Secrets(
            list.split(',')
                .map(str::trim)
                .filter(|secret| !secret.is_empty())
                .map(|secret| secret.as_bytes().to_vec())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets([redacted; {}])", self.0.len())
    }
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Check candidate hex signatures of `signed` against every secret.
fn verify(
    timestamp: i64,
    candidates: &[&str],
    signed: &[&[u8]],
    secrets: &Secrets,
    now: i64,
) -> Result<(), SignatureError> {
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale);
    }
    let candidates: Vec<Vec<u8>> = candidates
        .iter()
        .filter_map(|hex| hex::decode(hex).ok())
        .collect();
    let matched = secrets.0.iter().any(|secret| {
        let expected = mac(secret, signed);
        candidates
            .iter()
            .any(|candidate| bool::from(candidate.ct_eq(&expected)))
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The timestamp and the candidate signatures of a header made of
/// `key=value` parts: `t=<unix>,v1=<hex>,…` (Stripe), `ts=<unix>;h1=<hex>;…`
/// (Paddle). Unknown keys are skipped.
fn parse_header<'a>(
    header: Option<&'a str>,
    separator: char,
    timestamp_key: &str,
    signature_key: &str,
) -> Result<(i64, Vec<&'a str>), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(separator) {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        if key == timestamp_key {
            timestamp = Some(
                value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed)?,
            );
        } else if key == signature_key {
            signatures.push(value);
        }
    }
    Ok((timestamp.ok_or(SignatureError::Malformed)?, signatures))
}

/// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, signing `"<t>.<body>"`.
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &Secrets,
    now: i64,
) -> Result<(), SignatureError> {
    let (timestamp, signatures) = parse_header(header, ',', "t", "v1")?;
    let t = timestamp.to_string();
    verify(
        timestamp,
        &signatures,
        &[t.as_bytes(), b".", body],
        secrets,
        now,
    )
}

/// `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>…]`, signing `"<ts>:<body>"`.
pub fn verify_paddle(
    header: Option<&str>,
    body: &[u8],
    secrets: &Secrets,
    now: i64,
) -> Result<(), SignatureError> {
    let (timestamp, signatures) = parse_header(header, ';', "ts", "h1")?;
    let ts = timestamp.to_string();
    verify(
        timestamp,
        &signatures,
        &[ts.as_bytes(), b":", body],
        secrets,
        now,
    )
}

/// A `Stripe-Signature` header for `body`, as Stripe would send it.
pub fn sign_stripe(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret.as_bytes(), &[t.as_bytes(), b".", body]))
    )
}

/// A `Paddle-Signature` header for `body`, as Paddle would send it.
pub fn sign_paddle(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    format!(
        "ts={ts};h1={}",
        hex::encode(mac(secret.as_bytes(), &[ts.as_bytes(), b":", body]))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;

    #[test]
    fn stripe_signatures_verify_against_any_configured_secret() {
        let header = sign_stripe("whsec_new", NOW, BODY);
        assert_eq!(
            verify_stripe(Some(&header), BODY, &Secrets::parse("whsec_new"), NOW),
            Ok(())
        );
        assert_eq!(
            verify_stripe(
                Some(&header),
                BODY,
                &Secrets::parse("whsec_old, whsec_new"),
                NOW
            ),
            Ok(())
        );
        assert_eq!(
            verify_stripe(Some(&header), BODY, &Secrets::parse("whsec_old"), NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stripe_headers_may_carry_several_signatures() {
        let good = sign_stripe("whsec_a", NOW, BODY);
        let v1 = good.split(",v1=").nth(1).unwrap();
        let header = format!("t={NOW},v1={},v1={v1},v0=ignored", "0".repeat(64));
        assert_eq!(
            verify_stripe(Some(&header), BODY, &Secrets::parse("whsec_a"), NOW),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_or_a_stale_timestamp_fails() {
        let secrets = Secrets::parse("whsec_a");
        let header = sign_stripe("whsec_a", NOW, BODY);
        assert_eq!(
            verify_stripe(Some(&header), b"{}", &secrets, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe(Some(&header), BODY, &secrets, NOW + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_stripe(Some(&header), BODY, &secrets, NOW - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_stripe(Some(&header), BODY, &secrets, NOW + 300),
            Ok(())
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        let secrets = Secrets::parse("whsec_a");
        assert_eq!(
            verify_stripe(None, BODY, &secrets, NOW),
            Err(SignatureError::Missing)
        );
        for header in ["", "t=abc,v1=00", "v1=00", &format!("t={NOW}"), "garbage"] {
            assert_eq!(
                verify_stripe(Some(header), BODY, &secrets, NOW),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
        assert_eq!(
            verify_stripe(Some(&format!("t={NOW},v1=not-hex")), BODY, &secrets, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn paddle_signatures_verify() {
        let secrets = Secrets::parse("pdl_ntfset_1");
        let header = sign_paddle("pdl_ntfset_1", NOW, BODY);
        assert!(header.starts_with(&format!("ts={NOW};h1=")));
        assert_eq!(verify_paddle(Some(&header), BODY, &secrets, NOW), Ok(()));
        assert_eq!(
            verify_paddle(Some(&header), b"x", &secrets, NOW),
            Err(SignatureError::Mismatch)
        );
        // A Stripe-style signature of the same body is not a Paddle one.
        let stripe = sign_stripe("pdl_ntfset_1", NOW, BODY)
            .replace("t=", "ts=")
            .replace(",v1=", ";h1=");
        assert_eq!(
            verify_paddle(Some(&stripe), BODY, &secrets, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn secrets_never_print() {
        let secrets = Secrets::parse("whsec_topsecret,whsec_other");
        assert_eq!(format!("{secrets:?}"), "Secrets([redacted; 2])");
        assert!(Secrets::parse(" , ").is_empty());
    }
}
