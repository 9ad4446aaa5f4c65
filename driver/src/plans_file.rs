//! The plans file that `tallyd plans apply` reads: metrics, plans and
//! limits declared in TOML. Every mistake is reported with its line.
//!
//! ```toml
//! [metrics.messages]
//! kind = "consumable"              # or "allocation"
//! stripe_meter_event = "messages"  # optional: bill it through this Stripe meter
//!
//! [plans.free]
//! default = true
//! limits = { messages = 100, chatbots = 1 }
//!
//! [plans.growth]
//! stripe_price_id = "price_123"
//! limits = { messages = "unlimited", chatbots = 10 }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use tally_rules::Kind;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    pub name: String,
    pub kind: Kind,
    pub stripe_meter_event: Option<String>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    pub metric: String,
    /// `None`: unlimited.
    pub max_units: Option<i64>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    pub name: String,
    pub default: bool,
    pub stripe_price_id: Option<String>,
    pub paddle_price_id: Option<String>,
    pub limits: Vec<LimitSpec>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlansFile {
    pub metrics: Vec<MetricSpec>,
    pub plans: Vec<PlanSpec>,
}

/// A mistake in the file, at a line when one can be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFileError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PlanFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PlanFileError {}

impl PlanFileError {
    pub fn at(line: usize, message: impl Into<String>) -> PlanFileError {
        PlanFileError {
            line: Some(line),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    metrics: BTreeMap<String, Spanned<RawMetric>>,
    #[serde(default)]
    plans: BTreeMap<String, Spanned<RawPlan>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    kind: Spanned<String>,
    stripe_meter_event: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    default: bool,
    stripe_price_id: Option<Spanned<String>>,
    paddle_price_id: Option<Spanned<String>>,
    #[serde(default)]
    limits: BTreeMap<String, Spanned<RawLimit>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Count(i64),
    Word(String),
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn non_empty(
    value: Option<Spanned<String>>,
    what: &str,
    text: &str,
) -> Result<Option<String>, PlanFileError> {
    match value {
        Some(value) if value.get_ref().trim().is_empty() => Err(PlanFileError::at(
            line_of(text, value.span().start),
            format!("{what} must not be empty"),
        )),
        value => Ok(value.map(Spanned::into_inner)),
    }
}

/// Read and check a plans file.
pub fn parse(text: &str) -> Result<PlansFile, PlanFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|error| PlanFileError {
        line: error.span().map(|span| line_of(text, span.start)),
        message: error.message().trim().to_string(),
    })?;

    let mut file = PlansFile::default();
    for (name, metric) in raw.metrics {
        let line = line_of(text, metric.span().start);
        let metric = metric.into_inner();
        if name.is_empty() {
            return Err(PlanFileError::at(line, "a metric needs a name"));
        }
        let kind_line = line_of(text, metric.kind.span().start);
        let kind = metric.kind.into_inner();
        let Some(kind) = Kind::parse(&kind) else {
            return Err(PlanFileError::at(
                kind_line,
                format!("metric {name:?}: kind is \"consumable\" or \"allocation\", not {kind:?}"),
            ));
        };
        let stripe_meter_event = non_empty(
            metric.stripe_meter_event,
            &format!("metric {name:?}: stripe_meter_event"),
            text,
        )?;
        file.metrics.push(MetricSpec {
            name,
            kind,
            stripe_meter_event,
            line,
        });
    }

    let mut defaults: Vec<(String, usize)> = Vec::new();
    let mut price_ids: HashMap<String, (String, usize)> = HashMap::new();
    for (name, plan) in raw.plans {
        let line = line_of(text, plan.span().start);
        let plan = plan.into_inner();
        if name.is_empty() {
            return Err(PlanFileError::at(line, "a plan needs a name"));
        }
        if plan.default {
            defaults.push((name.clone(), line));
        }
        for price in [&plan.stripe_price_id, &plan.paddle_price_id]
            .into_iter()
            .flatten()
        {
            let price_line = line_of(text, price.span().start);
            if let Some((other, other_line)) =
                price_ids.insert(price.get_ref().clone(), (name.clone(), price_line))
            {
                return Err(PlanFileError::at(
                    price_line,
                    format!("plan {name:?} uses price id {:?}, as plan {other:?} does on line {other_line}", price.get_ref()),
                ));
            }
        }
        let mut limits = Vec::new();
        for (metric, limit) in plan.limits {
            let limit_line = line_of(text, limit.span().start);
            let max_units = match limit.into_inner() {
                RawLimit::Count(count) if count >= 0 => Some(count),
                RawLimit::Word(word) if word == "unlimited" => None,
                RawLimit::Count(count) => {
                    return Err(PlanFileError::at(
                        limit_line,
                        format!("plan {name:?}: the limit of {metric:?} is {count}; use 0 or more, or \"unlimited\""),
                    ))
                }
                RawLimit::Word(word) => {
                    return Err(PlanFileError::at(
                        limit_line,
                        format!("plan {name:?}: the limit of {metric:?} is {word:?}; use a whole number or \"unlimited\""),
                    ))
                }
            };
            limits.push(LimitSpec {
                metric,
                max_units,
                line: limit_line,
            });
        }
        file.plans.push(PlanSpec {
            stripe_price_id: non_empty(
                plan.stripe_price_id,
                &format!("plan {name:?}: stripe_price_id"),
                text,
            )?,
            paddle_price_id: non_empty(
                plan.paddle_price_id,
                &format!("plan {name:?}: paddle_price_id"),
                text,
            )?,
            name,
            default: plan.default,
            limits,
            line,
        });
    }
    if let [(first, first_line), (second, second_line), ..] = defaults.as_slice() {
        return Err(PlanFileError::at(
            *second_line,
            format!("plan {second:?} is marked default, and so is plan {first:?} on line {first_line}: only one can be"),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[metrics.messages]
kind = "consumable"
stripe_meter_event = "tally_messages"

[metrics.chatbots]
kind = "allocation"

[plans.free]
default = true
limits = { messages = 100, chatbots = 1 }

[plans.growth]
stripe_price_id = "price_growth"
limits = { messages = "unlimited", chatbots = 10 }
"#;

    #[test]
    fn a_good_file_reads_into_metrics_plans_and_limits() {
        let file = parse(GOOD).unwrap();
        assert_eq!(file.metrics.len(), 2);
        let messages = file.metrics.iter().find(|m| m.name == "messages").unwrap();
        assert_eq!(
            (
                messages.kind.as_str(),
                messages.stripe_meter_event.as_deref()
            ),
            ("consumable", Some("tally_messages"))
        );
        let growth = file.plans.iter().find(|p| p.name == "growth").unwrap();
        assert!(!growth.default);
        assert_eq!(growth.stripe_price_id.as_deref(), Some("price_growth"));
        let limits: Vec<_> = growth
            .limits
            .iter()
            .map(|l| (l.metric.as_str(), l.max_units, l.line))
            .collect();
        assert_eq!(
            limits,
            vec![("chatbots", Some(10), 15), ("messages", None, 15)]
        );
        assert!(
            file.plans
                .iter()
                .find(|p| p.name == "free")
                .unwrap()
                .default
        );
    }

    #[track_caller]
    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_name_their_line() {
        assert_eq!(
            error("[metrics.messages]\nkind = \"monthly\"\n"),
            "line 2: metric \"messages\": kind is \"consumable\" or \"allocation\", not \"monthly\""
        );
        assert_eq!(
            error("[plans.free]\nlimits = { messages = -5 }\n"),
            "line 2: plan \"free\": the limit of \"messages\" is -5; use 0 or more, or \"unlimited\""
        );
        assert_eq!(
            error("[plans.free]\n\nlimits = { messages = \"lots\" }\n"),
            "line 3: plan \"free\": the limit of \"messages\" is \"lots\"; use a whole number or \"unlimited\""
        );
        assert!(
            error("[plans.a]\ndefault = true\n[plans.b]\ndefault = true\n")
                .starts_with("line 3: plan \"b\" is marked default")
        );
        assert!(
            error("[plans.a]\nstripe_price_id = \"p\"\n[plans.b]\nstripe_price_id = \"p\"\n")
                .contains("line 4")
        );
        assert_eq!(
            error("[metrics.m]\nkind = \"consumable\"\nstripe_meter_event = \"\"\n"),
            "line 3: metric \"m\": stripe_meter_event must not be empty"
        );
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_their_line_too() {
        assert!(error("[plans.free]\nlimits = { messages = 100\n").starts_with("line 2:"));
        let unknown = error("[metrics.messages]\nkind = \"consumable\"\nmeter = \"x\"\n");
        assert!(
            unknown.starts_with("line 3:") && unknown.contains("unknown field `meter`"),
            "{unknown}"
        );
        assert!(error("[plan.free]\n").starts_with("line 1:"));
    }

    #[test]
    fn an_empty_file_declares_nothing() {
        assert_eq!(parse("").unwrap(), PlansFile::default());
    }
}
