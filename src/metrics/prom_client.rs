//! prom-client's cluster aggregation (`AggregatorRegistry.clusterMetrics()`), reproduced without
//! I/O: the answers of Node workers are read from their IPC messages ([`parse_answer`]), grouped
//! and aggregated by prom-client's rules ([`aggregate`]), and printed as its `Registry.metrics()`
//! prints them ([`render`]).
//!
//! The rules, from prom-client 15 (`lib/cluster.js`, `lib/metricAggregators.js`, `lib/util.js`,
//! `lib/registry.js`):
//!
//! - Metrics are grouped by `name` across the answers, in order of first appearance; each group
//!   takes the `help`, `type` and `aggregator` of its first metric. `omit` drops the group.
//! - Within a group, values are grouped by `` `${metricName}_${hashObject(labels)}` `` (label keys
//!   sorted, `key:value,` each, `undefined` values skipped), in order of first appearance; each
//!   becomes one value: the aggregator applied to the group's values, with the labels and
//!   `metricName` (when truthy) of its first value. Timestamps, exemplars and shared labels go.
//! - `sum`, `average`, `min`, `max` and `first` compute as JavaScript does, `null` and `undefined`
//!   included (JSON turns `NaN` and `Infinity` into `null`).
//! - The text: `# HELP name help` and `# TYPE name type` (name and help with `\` and newlines
//!   escaped), then `metricName{k="v",...} value` per value, labels in their object's order,
//!   string values escaped (`\`, newline, `"`), other values as JavaScript prints them, the value
//!   as `getValueAsString` prints it (`Nan`, `+Inf`, `-Inf`, or JavaScript's number form).
//!   Families are joined by an empty line and the text ends with a newline.
//!
//! clusterd differs in two ways, both documented in the README: the answers are taken in slot
//! order (a Node primary takes them in arrival order), and a family named like clusterd's own
//! (`process_*`, `clusterd_*`) is renamed with [`super::exposition::RENAMED_PREFIX`].

use std::collections::HashMap;

use crate::node::value::{Key, Value, number_to_js_string};

/// The message type of prom-client's request to a worker.
pub const REQUEST_TYPE: &str = "prom-client:getMetricsReq";
/// The message type of a worker's answer.
pub const ANSWER_TYPE: &str = "prom-client:getMetricsRes";

/// How values of one metric are combined across workers (the metric's `aggregator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregator {
    Sum,
    First,
    Min,
    Max,
    Average,
    Omit,
}

impl Aggregator {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sum" => Self::Sum,
            "first" => Self::First,
            "min" => Self::Min,
            "max" => Self::Max,
            "average" => Self::Average,
            "omit" => Self::Omit,
            _ => return None,
        })
    }
}

/// A value as JavaScript holds it: a number, or what JSON made of `NaN` and `Infinity` (`null`),
/// or a missing one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Number(f64),
    Null,
    Undefined,
}

impl Num {
    /// `+value`: what the arithmetic of the aggregators sees.
    fn to_number(self) -> f64 {
        match self {
            Num::Number(n) => n,
            Num::Null => 0.0,
            Num::Undefined => f64::NAN,
        }
    }
}

/// A `metricName` as JavaScript would put it in the grouping key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricName {
    Undefined,
    Null,
    Name(String),
}

/// A label's value: its JavaScript string form, and whether it was a string (only strings are
/// escaped when printed). `None`: `undefined` (skipped by the grouping key, printed `undefined`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelValue {
    pub text: Option<String>,
    pub string: bool,
}

/// One value of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric_name: MetricName,
    pub labels: Vec<(String, LabelValue)>,
    pub value: Num,
}

/// One metric of a worker's `getMetricsAsJSON()`, or one aggregated family.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub help: String,
    pub kind: String,
    pub aggregator: Aggregator,
    pub values: Vec<Sample>,
}

/// What a worker's answer was, when it was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The worker's registry failed (prom-client's `error` field).
    #[error("the worker's registry failed: {0}")]
    Registry(String),
    /// The answer is not what prom-client sends.
    #[error("not prom-client's answer: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> AnswerError {
    AnswerError::Malformed(what.into())
}

/// The request id of a prom-client answer (`requestId`), if it has a usable one.
pub fn request_id(message: &Value) -> Option<u32> {
    message.get("requestId").and_then(Value::as_i64).and_then(|id| u32::try_from(id).ok())
}

/// Reads a worker's answer (`{type, requestId, metrics: [registry, ...]}` or `{..., error}`): the
/// metrics of all its registries, in order. Names that collide with clusterd's own are renamed.
pub fn parse_answer(message: &Value) -> Result<Vec<Metric>, AnswerError> {
    if let Some(error) = message.get("error").filter(|e| truthy(e)) {
        let text = match error {
            Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        };
        return Err(AnswerError::Registry(text));
    }
    let registries = message.get("metrics").and_then(elements).ok_or_else(|| malformed("no metrics array"))?;
    let mut metrics = Vec::new();
    for registry in registries {
        let registry = elements(registry).ok_or_else(|| malformed("a registry that is not an array"))?;
        for metric in registry {
            metrics.push(parse_metric(metric)?);
        }
    }
    Ok(metrics)
}

/// The elements of an array as `forEach` visits them (holes skipped), dense or sparse (V8 writes
/// some arrays in its sparse form).
fn elements(value: &Value) -> Option<Vec<&Value>> {
    match value {
        Value::Array(items) => Some(items.iter().filter(|v| !matches!(v, Value::Hole)).collect()),
        Value::SparseArray { entries, .. } => {
            let mut indexed: Vec<(u32, &Value)> =
                entries.iter().filter_map(|(k, v)| k.array_index().map(|i| (i, v))).collect();
            indexed.sort_by_key(|(i, _)| *i);
            Some(indexed.into_iter().map(|(_, v)| v).collect())
        }
        _ => None,
    }
}

/// JavaScript's truthiness.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Undefined | Value::Null | Value::Hole => false,
        Value::Bool(b) => *b,
        Value::Int(n) => *n != 0,
        Value::Number(n) => !(n.is_nan() || *n == 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Utf16(units) => !units.is_empty(),
        _ => true,
    }
}

fn string_field(metric: &Value, field: &str) -> Result<String, AnswerError> {
    match metric.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Utf16(units)) => Ok(String::from_utf16_lossy(units)),
        _ => Err(malformed(format!("a metric whose {field} is not a string"))),
    }
}

fn parse_metric(metric: &Value) -> Result<Metric, AnswerError> {
    if metric.as_object().is_none() {
        return Err(malformed("a metric that is not an object"));
    }
    let name = super::exposition::renamed(&string_field(metric, "name")?).into_owned();
    let help = string_field(metric, "help")?;
    let kind = string_field(metric, "type")?;
    let aggregator = match metric.get("aggregator") {
        Some(Value::String(s)) => Aggregator::from_name(s),
        _ => None,
    }
    .ok_or_else(|| malformed(format!("metric {name}: no known aggregator")))?;
    let values =
        metric.get("values").and_then(elements).ok_or_else(|| malformed(format!("metric {name}: no values")))?;
    let values = values.into_iter().map(parse_sample).collect::<Result<_, _>>()?;
    Ok(Metric { name, help, kind, aggregator, values })
}

fn parse_sample(sample: &Value) -> Result<Sample, AnswerError> {
    if sample.as_object().is_none() {
        return Err(malformed("a value that is not an object"));
    }
    let value = match sample.get("value") {
        None | Some(Value::Undefined | Value::Hole) => Num::Undefined,
        Some(Value::Null) => Num::Null,
        Some(v) => Num::Number(v.as_f64().ok_or_else(|| malformed("a value that is not a number"))?),
    };
    let metric_name = match sample.get("metricName") {
        None | Some(Value::Undefined | Value::Hole) => MetricName::Undefined,
        Some(Value::Null) => MetricName::Null,
        Some(Value::String(s)) => MetricName::Name(super::exposition::renamed(s).into_owned()),
        Some(_) => return Err(malformed("a metricName that is not a string")),
    };
    let entries = sample
        .get("labels")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("a value whose labels are not an object"))?;
    let mut labels = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let value = match value {
            Value::String(s) => LabelValue { text: Some(s.clone()), string: true },
            Value::Utf16(units) => LabelValue { text: Some(String::from_utf16_lossy(units)), string: true },
            Value::Int(n) => LabelValue { text: Some(n.to_string()), string: false },
            Value::Number(n) => LabelValue { text: Some(number_to_js_string(*n)), string: false },
            Value::Bool(b) => LabelValue { text: Some(b.to_string()), string: false },
            Value::Null => LabelValue { text: Some("null".to_owned()), string: false },
            Value::Undefined | Value::Hole => LabelValue { text: None, string: false },
            _ => return Err(malformed("a label value that is not a primitive")),
        };
        labels.push((key_string(key), value));
    }
    Ok(Sample { metric_name, labels, value })
}

fn key_string(key: &Key) -> String {
    key.to_js_string().into_owned()
}

/// `hashObject(labels)`: sorted keys (by UTF-16 code units, as `Array.prototype.sort`), `key:value,`
/// for each value that is not `undefined`.
fn hash_labels(labels: &[(String, LabelValue)]) -> String {
    let mut keys: Vec<&(String, LabelValue)> = labels.iter().collect();
    if keys.len() > 1 {
        keys.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
    let mut hash = String::new();
    for (key, value) in keys {
        if let Some(text) = &value.text {
            hash.push_str(key);
            hash.push(':');
            hash.push_str(text);
            hash.push(',');
        }
    }
    hash
}

/// `Math.min` / `Math.max`: NaN wins, and -0 is below +0.
fn js_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a < b || (a == b && a.is_sign_negative()) {
        a
    } else {
        b
    }
}

fn js_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b || (a == b && b.is_sign_negative()) {
        a
    } else {
        b
    }
}

fn apply(aggregator: Aggregator, values: &[&Sample]) -> Num {
    let sum = || values.iter().fold(0.0, |p, c| p + c.value.to_number());
    match aggregator {
        Aggregator::Sum => Num::Number(sum()),
        Aggregator::First => values.first().map_or(Num::Undefined, |v| v.value),
        Aggregator::Average => Num::Number(sum() / values.len() as f64),
        Aggregator::Min => Num::Number(values.iter().fold(f64::INFINITY, |p, c| js_min(p, c.value.to_number()))),
        Aggregator::Max => Num::Number(values.iter().fold(f64::NEG_INFINITY, |p, c| js_max(p, c.value.to_number()))),
        // Never called: the family is dropped before.
        Aggregator::Omit => Num::Undefined,
    }
}

/// `AggregatorRegistry.aggregate`: the workers' metrics (one list per worker, in the order they
/// are to be taken) as aggregated families.
pub fn aggregate(answers: &[Vec<Metric>]) -> Vec<Metric> {
    let mut order: Vec<Vec<&Metric>> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for metric in answers.iter().flatten() {
        match by_name.get(metric.name.as_str()) {
            Some(&at) => order[at].push(metric),
            None => {
                by_name.insert(&metric.name, order.len());
                order.push(vec![metric]);
            }
        }
    }
    let mut families = Vec::with_capacity(order.len());
    for group in order {
        let first = group[0];
        if first.aggregator == Aggregator::Omit {
            continue;
        }
        let mut by_labels: Vec<Vec<&Sample>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for sample in group.iter().flat_map(|m| &m.values) {
            let name = match &sample.metric_name {
                MetricName::Undefined => "undefined",
                MetricName::Null => "null",
                MetricName::Name(name) => name,
            };
            let key = format!("{name}_{}", hash_labels(&sample.labels));
            match index.get(&key) {
                Some(&at) => by_labels[at].push(sample),
                None => {
                    index.insert(key, by_labels.len());
                    by_labels.push(vec![sample]);
                }
            }
        }
        let values = by_labels
            .iter()
            .map(|values| Sample {
                // Only a truthy metricName is kept; the others print as the family's name.
                metric_name: match &values[0].metric_name {
                    MetricName::Name(name) if !name.is_empty() => MetricName::Name(name.clone()),
                    _ => MetricName::Undefined,
                },
                labels: values[0].labels.clone(),
                value: apply(first.aggregator, values),
            })
            .collect();
        families.push(Metric {
            name: first.name.clone(),
            help: first.help.clone(),
            kind: first.kind.clone(),
            aggregator: first.aggregator,
            values,
        });
    }
    families
}

/// `escapeString`: backslashes and newlines.
fn escape_into(out: &mut String, text: &str, quotes: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `getValueAsString`.
fn value_string(value: Num) -> String {
    match value {
        Num::Number(n) if n.is_nan() => "Nan".to_owned(),
        Num::Number(n) if n == f64::NEG_INFINITY => "-Inf".to_owned(),
        Num::Number(n) if n.is_infinite() => "+Inf".to_owned(),
        Num::Number(n) => number_to_js_string(n),
        // Not finite and not below 0, for `Number.isFinite` and `<`.
        Num::Null | Num::Undefined => "+Inf".to_owned(),
    }
}

/// `Registry.metrics()` of the aggregated families (text format 0.0.4), appended to `out`. No
/// family: nothing (prom-client would print a lone newline).
pub fn render(families: &[Metric], out: &mut String) {
    for (i, family) in families.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str("# HELP ");
        escape_into(out, &family.name, false);
        out.push(' ');
        escape_into(out, &family.help, false);
        out.push_str("\n# TYPE ");
        escape_into(out, &family.name, false);
        out.push(' ');
        out.push_str(&family.kind);
        for sample in &family.values {
            out.push('\n');
            match &sample.metric_name {
                MetricName::Name(name) => out.push_str(name),
                _ => escape_into(out, &family.name, false),
            }
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(key);
                    out.push_str("=\"");
                    match &value.text {
                        Some(text) if value.string => escape_into(out, text, true),
                        Some(text) => out.push_str(text),
                        None => out.push_str("undefined"),
                    }
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&value_string(sample.value));
        }
    }
    if !families.is_empty() {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, kind: &str, aggregator: &str, values: Vec<Value>) -> Value {
        Value::object([
            ("help", Value::from(format!("{name} help"))),
            ("name", Value::from(name)),
            ("type", Value::from(kind)),
            ("values", Value::array(values)),
            ("aggregator", Value::from(aggregator)),
        ])
    }

    fn value(v: Value, labels: Vec<(&str, Value)>) -> Value {
        Value::object([("value", v), ("labels", Value::object(labels))])
    }

    fn answer(metrics: Vec<Value>) -> Value {
        Value::object([
            ("type", Value::from(ANSWER_TYPE)),
            ("requestId", Value::from(3)),
            ("metrics", Value::array([Value::array(metrics)])),
        ])
    }

    fn text(answers: &[Value]) -> String {
        let parsed: Vec<_> = answers.iter().map(|a| parse_answer(a).expect("an answer")).collect();
        let mut out = String::new();
        render(&aggregate(&parsed), &mut out);
        out
    }

    /// A counter is summed, a gauge with `max` takes the largest, `first` the first worker's.
    #[test]
    fn counters_sum_and_gauges_follow_their_aggregator() {
        let worker = |n: i32, g: f64| {
            answer(vec![
                metric("requests_total", "counter", "sum", vec![value(Value::from(n), vec![("code", "200".into())])]),
                metric("queue", "gauge", "max", vec![value(Value::Number(g), vec![])]),
                metric("version", "gauge", "first", vec![value(Value::from(n), vec![])]),
            ])
        };
        assert_eq!(
            text(&[worker(2, 1.5), worker(3, 7.25)]),
            "# HELP requests_total requests_total help\n# TYPE requests_total counter\nrequests_total{code=\"200\"} 5\n\n\
             # HELP queue queue help\n# TYPE queue gauge\nqueue 7.25\n\n\
             # HELP version version help\n# TYPE version gauge\nversion 2\n"
        );
    }

    /// Histogram buckets are numbers in `le` (printed as JavaScript prints them), merged per
    /// metricName and labels whatever the label order; `_sum` and `_count` by their metricName.
    #[test]
    fn histograms_merge_per_bucket() {
        let worker = |count: i32, sum: f64| {
            let bucket = |le: Value, n: i32, order_flipped: bool| {
                let labels = if order_flipped {
                    vec![("method", "GET".into()), ("le", le)]
                } else {
                    vec![("le", le), ("method", "GET".into())]
                };
                Value::object([
                    ("value", Value::from(n)),
                    ("labels", Value::object(labels)),
                    ("metricName", Value::from("lat_bucket")),
                ])
            };
            let flipped = count == 2;
            let plain = |name: &str, v: Value| {
                Value::object([
                    ("value", v),
                    ("labels", Value::object([("method", Value::from("GET"))])),
                    ("metricName", Value::from(name)),
                ])
            };
            answer(vec![metric(
                "lat",
                "histogram",
                "sum",
                vec![
                    bucket(Value::Number(0.005), 1, flipped),
                    bucket(Value::from("+Inf"), count, flipped),
                    plain("lat_sum", Value::Number(sum)),
                    plain("lat_count", Value::from(count)),
                ],
            )])
        };
        assert_eq!(
            text(&[worker(1, 0.001), worker(2, 0.1)]),
            "# HELP lat lat help\n# TYPE lat histogram\n\
             lat_bucket{le=\"0.005\",method=\"GET\"} 2\nlat_bucket{le=\"+Inf\",method=\"GET\"} 3\n\
             lat_sum{method=\"GET\"} 0.101\nlat_count{method=\"GET\"} 3\n"
        );
    }

    #[test]
    fn javascript_arithmetic_and_printing() {
        let one = |aggregator: &str, values: Vec<Value>| {
            let answers: Vec<Value> = values
                .into_iter()
                .map(|v| answer(vec![metric("m", "gauge", aggregator, vec![value(v, vec![])])]))
                .collect();
            let out = text(&answers);
            out.lines().nth(2).expect("a value line").trim_start_matches("m ").to_owned()
        };
        // JSON's null for NaN: 0 in a sum, "+Inf" when first.
        assert_eq!(one("sum", vec![Value::from(1), Value::Null]), "1");
        assert_eq!(one("first", vec![Value::Null, Value::from(1)]), "+Inf");
        assert_eq!(one("sum", vec![Value::Number(f64::NAN)]), "Nan");
        assert_eq!(one("min", vec![Value::Number(f64::NEG_INFINITY), Value::from(2)]), "-Inf");
        assert_eq!(one("max", vec![Value::Number(1e21), Value::from(2)]), "1e+21");
        assert_eq!(one("average", vec![Value::from(1), Value::from(2)]), "1.5");
        assert_eq!(one("sum", vec![Value::Number(0.1), Value::Number(0.2)]), "0.30000000000000004");
        assert_eq!(one("min", vec![Value::Number(1e-7)]), "1e-7");
        // An `omit` family is left out entirely.
        assert_eq!(text(&[answer(vec![metric("m", "gauge", "omit", vec![value(Value::from(1), vec![])])])]), "");
    }

    #[test]
    fn escaping_and_label_kinds() {
        let m = Value::object([
            ("help", Value::from("a \\ b\nc \"q\"")),
            ("name", Value::from("esc")),
            ("type", Value::from("gauge")),
            (
                "values",
                Value::array([value(
                    Value::from(1),
                    vec![("s", Value::from("x\"y\\z\nw")), ("n", Value::Null), ("b", Value::Bool(true))],
                )]),
            ),
            ("aggregator", Value::from("sum")),
        ]);
        assert_eq!(
            text(&[answer(vec![m])]),
            "# HELP esc a \\\\ b\\nc \"q\"\n# TYPE esc gauge\nesc{s=\"x\\\"y\\\\z\\nw\",n=\"null\",b=\"true\"} 1\n"
        );
    }

    /// V8 writes some arrays in its sparse form; they read as `forEach` visits them.
    #[test]
    fn sparse_arrays_read_in_index_order() {
        let values = Value::SparseArray {
            length: 3,
            entries: vec![
                (Key::Int(2), value(Value::from(5), vec![("l", "b".into())])),
                (Key::Int(0), value(Value::from(4), vec![("l", "a".into())])),
            ],
        };
        let m = Value::object([
            ("help", Value::from("h")),
            ("name", Value::from("m")),
            ("type", Value::from("gauge")),
            ("values", values),
            ("aggregator", Value::from("sum")),
        ]);
        assert_eq!(text(&[answer(vec![m])]), "# HELP m h\n# TYPE m gauge\nm{l=\"a\"} 4\nm{l=\"b\"} 5\n");
    }

    #[test]
    fn reserved_names_are_renamed() {
        let m = metric("process_cpu_seconds_total", "counter", "sum", vec![value(Value::from(1), vec![])]);
        let out = text(&[answer(vec![m])]);
        assert!(out.contains("# TYPE worker_process_cpu_seconds_total counter\nworker_process_cpu_seconds_total 1\n"));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let cases = [
            Value::Null,
            Value::object([("metrics", Value::from(1))]),
            Value::object([("metrics", Value::array([Value::from(1)]))]),
            answer(vec![Value::from("x")]),
            answer(vec![metric("m", "gauge", "median", vec![])]),
            answer(vec![metric("m", "gauge", "sum", vec![value(Value::from("7"), vec![])])]),
            answer(vec![metric("m", "gauge", "sum", vec![Value::object([("value", Value::from(1))])])]),
            answer(vec![metric("m", "gauge", "sum", vec![value(Value::from(1), vec![("l", Value::array([]))])])]),
        ];
        for case in cases {
            assert!(matches!(parse_answer(&case), Err(AnswerError::Malformed(_))), "{case:?}");
        }
        let failed = Value::object([("type", Value::from(ANSWER_TYPE)), ("error", Value::from("boom"))]);
        assert_eq!(parse_answer(&failed), Err(AnswerError::Registry("boom".into())));
    }
}
