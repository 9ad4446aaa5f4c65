//! Idempotency keys: a key names one call. A repeat of the same call gets
//! the first answer; the same key on another call is the caller's bug and
//! is refused, never answered with another call's result.

use crate::errors::{self, Failure};

/// What a keyed call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `check_and_increment_usage`.
    Check,
    /// `release_usage`.
    Release,
}

impl Operation {
    /// As stored in `tally.idempotency_keys.operation`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Check => "check",
            Operation::Release => "release",
        }
    }

    pub fn parse(text: &str) -> Option<Operation> {
        match text {
            "check" => Some(Operation::Check),
            "release" => Some(Operation::Release),
            _ => None,
        }
    }

    /// How a message names it.
    pub const fn described(self) -> &'static str {
        match self {
            Operation::Check => "a usage check",
            Operation::Release => "a release",
        }
    }
}

/// The arguments a key was used with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedCall<'a> {
    pub operation: Operation,
    pub metric: &'a str,
    pub units: i64,
}

/// Whether `this` call may take the answer stored for `first` under `key`:
/// only when it is the same call.
pub fn same_call(key: &str, first: KeyedCall<'_>, this: KeyedCall<'_>) -> Result<(), Failure> {
    let mut differences = Vec::new();
    if first.operation != this.operation {
        differences.push(format!(
            "it was used for {}, this call is {}",
            first.operation.described(),
            this.operation.described()
        ));
    }
    if first.metric != this.metric {
        differences.push(format!(
            "metric {} then, {} now",
            errors::quoted(first.metric),
            errors::quoted(this.metric)
        ));
    }
    if first.units != this.units {
        differences.push(format!("units {} then, {} now", first.units, this.units));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(errors::idempotency_key_reused(key, &differences.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{message, SqlState};

    const fn call(operation: Operation, metric: &'static str, units: i64) -> KeyedCall<'static> {
        KeyedCall {
            operation,
            metric,
            units,
        }
    }

    #[test]
    fn only_the_same_call_takes_the_first_answer() {
        use Operation::*;
        let first = call(Check, "messages", 1);
        let cases = [
            (call(Check, "messages", 1), None),
            (
                call(Check, "messages", 1_000_000),
                Some("units 1 then, 1000000 now"),
            ),
            (
                call(Check, "chatbots", 1),
                Some("metric 'messages' then, 'chatbots' now"),
            ),
            (
                call(Release, "messages", 1),
                Some("it was used for a usage check, this call is a release"),
            ),
            (
                call(Release, "seats", 2),
                Some(
                    "it was used for a usage check, this call is a release; \
                     metric 'messages' then, 'seats' now; units 1 then, 2 now",
                ),
            ),
        ];
        for (this, expected) in cases {
            match (same_call("req-1", first, this), expected) {
                (Ok(()), None) => {}
                (Err(failure), Some(difference)) => {
                    assert_eq!(failure.state, SqlState::InvalidParameterValue);
                    assert_eq!(failure.message, message::IDEMPOTENCY_KEY_REUSED);
                    let detail = failure.detail.unwrap();
                    assert!(detail.contains("'req-1'"), "{detail}");
                    assert!(detail.ends_with(difference), "{detail}");
                }
                (result, expected) => panic!("{this:?}: {result:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn operations_round_trip() {
        for operation in [Operation::Check, Operation::Release] {
            assert_eq!(Operation::parse(operation.as_str()), Some(operation));
        }
        assert_eq!(Operation::parse("decrement"), None);
    }
}
