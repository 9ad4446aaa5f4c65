//! Reading durations and ages from the command line, and printing tables.

use std::fmt;
use std::time::Duration;

/// `250ms`, `10s`, `5m`, `1h` → a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use a number and ms, s, m or h"))?;
    let millis = match unit {
        "ms" => number,
        "s" => number * 1_000,
        "m" => number * 60_000,
        "h" => number * 3_600_000,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: use a number and ms, s, m or h"
            ))
        }
    };
    if millis == 0 {
        return Err(format!("{text:?}: a duration must be longer than zero"));
    }
    Ok(Duration::from_millis(millis))
}

/// A duration as the command line writes it: read by [`parse_duration`],
/// shown (as `--help` shows a default) in seconds, or in milliseconds when
/// it is not a whole number of seconds, so that it reads back the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis.is_multiple_of(1_000) {
            write!(f, "{}s", millis / 1_000)
        } else {
            write!(f, "{millis}ms")
        }
    }
}

pub(super) fn parse_span(text: &str) -> Result<Span, String> {
    parse_duration(text).map(Span)
}

/// `30d` → `30 days`: an age as a Postgres interval.
pub fn parse_age(age: &str) -> Result<String, String> {
    let (number, unit) = age.trim().split_at(
        age.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(age.len()),
    );
    let unit = match unit {
        "d" => "days",
        "h" => "hours",
        "m" => "minutes",
        "s" => "seconds",
        _ => {
            return Err(format!(
                "{age:?} is not an age: use a number and d, h, m or s, as in 30d"
            ))
        }
    };
    let number: u32 = number
        .parse()
        .map_err(|_| format!("{age:?} is not an age: use a number and a unit, as in 30d"))?;
    Ok(format!("{number} {unit}"))
}

/// Left-aligned columns under a header.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

pub(super) fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ages_become_intervals() {
        assert_eq!(parse_age("30d").as_deref(), Ok("30 days"));
        assert_eq!(parse_age("12h").as_deref(), Ok("12 hours"));
        assert_eq!(parse_age("0m").as_deref(), Ok("0 minutes"));
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-5d").is_err());
        assert!(parse_age("5 weeks").is_err());
    }

    #[test]
    fn durations_read_with_their_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn spans_show_as_they_are_written() {
        for text in ["250ms", "60s", "10s", "1500ms"] {
            assert_eq!(parse_span(text).unwrap().to_string(), text);
        }
        assert_eq!(parse_span("5m").unwrap().to_string(), "300s");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["messages".into(), "95".into()],
            vec!["chatbots".into(), "1".into()],
        ];
        assert_eq!(
            table(&["metric", "used"], &rows),
            "metric    used\nmessages  95\nchatbots  1\n"
        );
    }
}
