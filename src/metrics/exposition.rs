//! The Prometheus text format 0.0.4 of SDK workers: a bounded, pure parser ([`parse`]) and the
//! merge of several workers' texts into one exposition ([`Merger`]), each sample labelled with
//! `worker="<slot>"` and each family printed once with one HELP and one TYPE.
//!
//! The parser keeps every token as the worker wrote it (names, label values with their escapes,
//! values, timestamps): clusterd checks them and copies them, it never formats a number. It
//! refuses what Prometheus' own parser refuses (a bad name, an unknown escape, a value that is not
//! a float, a second HELP or TYPE for a family, a TYPE after the family's samples), so a worker
//! that answers garbage is left out of the scrape instead of breaking it.

use std::borrow::Cow;
use std::collections::HashMap;

/// Families whose name starts with one of these are clusterd's own (`clusterd_*`) or the standard
/// process metrics that clusterd exports for itself (`process_*`): a worker's family of that name
/// would collide with them, so it is renamed with [`RENAMED_PREFIX`].
pub const RESERVED_PREFIXES: [&str; 2] = ["clusterd_", "process_"];
/// What a worker's family with a reserved name is prefixed with: `process_cpu_seconds_total` of a
/// worker becomes `worker_process_cpu_seconds_total`.
pub const RENAMED_PREFIX: &str = "worker_";
/// The label that names the worker (its slot, as `clusterd status` shows it).
pub const WORKER_LABEL: &str = "worker";
/// What a worker's own `worker` label is renamed to (Prometheus' convention for a clash between
/// a target's label and one the scraper adds).
pub const EXPORTED_WORKER_LABEL: &str = "exported_worker";

/// A name as it appears in the merged exposition.
pub fn renamed(name: &str) -> Cow<'_, str> {
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Cow::Owned(format!("{RENAMED_PREFIX}{name}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Why a worker's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    /// The line, from 1.
    pub line: usize,
    pub what: &'static str,
}

/// A metric family of one worker's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family<'a> {
    pub name: &'a str,
    /// The docstring as written (escapes kept).
    pub help: Option<&'a str>,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`; `None` if no TYPE line.
    pub kind: Option<&'a str>,
    pub samples: Vec<Sample<'a>>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// Label names and values, the values as written between the quotes (escapes kept).
    pub labels: Vec<(&'a str, &'a str)>,
    pub value: &'a str,
    pub timestamp: Option<&'a str>,
}

const KINDS: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_float(token: &str) -> bool {
    // Rust's parser takes what Go's does for this format (NaN, +Inf, -Inf, exponents), and also
    // "inf"/"infinity" in any case, which Go accepts too.
    token.parse::<f64>().is_ok()
}

fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits off the next blank-separated token.
fn token(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    let end = text.bytes().position(blank).unwrap_or(text.len());
    (&text[..end], &text[end..])
}

/// Parses one worker's text. Everything returned borrows from `text`.
pub fn parse(text: &str) -> Result<Vec<Family<'_>>, ParseError> {
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (n, line) in text.split('\n').enumerate() {
        let fail = |what| ParseError { line: n + 1, what };
        let line = line.strip_suffix('\r').unwrap_or(line).trim_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let (keyword, rest) = token(comment);
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let (name, rest) = token(rest);
            if !is_metric_name(name) {
                return Err(fail("a HELP or TYPE line without a valid metric name"));
            }
            let at = *index.entry(name).or_insert_with(|| {
                families.push(Family { name, help: None, kind: None, samples: Vec::new() });
                families.len() - 1
            });
            let family = &mut families[at];
            if keyword == "HELP" {
                if family.help.is_some() {
                    return Err(fail("a second HELP line for a family"));
                }
                let help = rest.strip_prefix([' ', '\t']).unwrap_or(rest);
                if !valid_help(help) {
                    return Err(fail("an invalid escape in a HELP line"));
                }
                family.help = Some(help);
            } else {
                let (kind, rest) = token(rest);
                if !KINDS.contains(&kind) || !rest.trim_matches([' ', '\t']).is_empty() {
                    return Err(fail("an unknown metric type"));
                }
                if family.kind.is_some() {
                    return Err(fail("a second TYPE line for a family"));
                }
                if !family.samples.is_empty() {
                    return Err(fail("a TYPE line after the family's samples"));
                }
                family.kind = Some(kind);
            }
            continue;
        }
        let sample = parse_sample(line).map_err(fail)?;
        let at = family_of(sample.name, &families, &index);
        let at = match at {
            Some(at) => at,
            None => {
                index.insert(sample.name, families.len());
                families.push(Family { name: sample.name, help: None, kind: None, samples: Vec::new() });
                families.len() - 1
            }
        };
        families[at].samples.push(sample);
    }
    Ok(families)
}

/// The family a sample belongs to: its own name's, or a histogram's or summary's whose suffixed
/// series it is.
fn family_of(name: &str, families: &[Family<'_>], index: &HashMap<&str, usize>) -> Option<usize> {
    if let Some(&at) = index.get(name) {
        return Some(at);
    }
    for (suffix, kinds) in
        [("_bucket", &["histogram"][..]), ("_sum", &["histogram", "summary"]), ("_count", &["histogram", "summary"])]
    {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(&at) = index.get(base)
            && families[at].kind.is_some_and(|k| kinds.contains(&k))
        {
            return Some(at);
        }
    }
    None
}

fn valid_help(help: &str) -> bool {
    let mut escaped = false;
    for c in help.chars() {
        if escaped {
            if c != '\\' && c != 'n' {
                return false;
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        }
    }
    // A trailing lone backslash is taken literally by Prometheus' parser; refuse it all the same:
    // copied into the merged text it would escape the newline that follows.
    !escaped
}

fn parse_sample(line: &str) -> Result<Sample<'_>, &'static str> {
    let end = line.bytes().position(|b| b == b'{' || blank(b)).unwrap_or(line.len());
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err("a sample without a valid metric name");
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    let (value, rest) = token(rest);
    if !is_float(value) {
        return Err("a sample value that is not a number");
    }
    let (timestamp, rest) = token(rest);
    let timestamp = if timestamp.is_empty() {
        None
    } else if timestamp.parse::<i64>().is_ok() {
        Some(timestamp)
    } else {
        return Err("a timestamp that is not an integer");
    };
    if !rest.trim_matches([' ', '\t']).is_empty() {
        return Err("more after the timestamp");
    }
    Ok(Sample { name, labels, value, timestamp })
}

/// Parses `name="value",...}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(mut text: &'a str, labels: &mut Vec<(&'a str, &'a str)>) -> Result<&'a str, &'static str> {
    loop {
        text = text.trim_start_matches([' ', '\t']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let end = text.bytes().position(|b| b == b'=' || blank(b)).ok_or("a label without a value")?;
        let name = &text[..end];
        if !is_label_name(name) {
            return Err("an invalid label name");
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err("a label given twice");
        }
        text = text[end..].trim_start_matches([' ', '\t']);
        text = text.strip_prefix('=').ok_or("a label without =")?.trim_start_matches([' ', '\t']);
        text = text.strip_prefix('"').ok_or("a label value without quotes")?;
        let mut escaped = false;
        let mut close = None;
        for (i, b) in text.bytes().enumerate() {
            if escaped {
                if !matches!(b, b'\\' | b'"' | b'n') {
                    return Err("an invalid escape in a label value");
                }
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                close = Some(i);
                break;
            }
        }
        let close = close.ok_or("an unterminated label value")?;
        labels.push((name, &text[..close]));
        text = text[close + 1..].trim_start_matches([' ', '\t']);
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err("labels not separated by commas");
        }
    }
}

/// The workers' families merged: each family once, in order of first appearance (workers taken
/// in the order they are added), with the first HELP and TYPE that a worker gave it.
#[derive(Debug, Default)]
pub struct Merger<'a> {
    families: Vec<Merged<'a>>,
    index: HashMap<Cow<'a, str>, usize>,
    /// Families of a worker left out because another worker declared that name with another type.
    pub conflicts: u32,
}

#[derive(Debug)]
struct Merged<'a> {
    name: Cow<'a, str>,
    help: Option<&'a str>,
    kind: Option<&'a str>,
    samples: Vec<(u32, &'a Sample<'a>)>,
}

impl<'a> Merger<'a> {
    /// Adds the families of the worker in slot `worker`.
    pub fn add(&mut self, worker: u32, families: &'a [Family<'a>]) {
        for family in families {
            let name = renamed(family.name);
            match self.index.get(&name) {
                Some(&at) => {
                    let merged = &mut self.families[at];
                    let kind = |k: Option<&str>| k.unwrap_or("untyped").to_owned();
                    if kind(merged.kind) != kind(family.kind) {
                        self.conflicts += 1;
                        continue;
                    }
                    merged.help = merged.help.or(family.help);
                    merged.samples.extend(family.samples.iter().map(|s| (worker, s)));
                }
                None => {
                    self.index.insert(name.clone(), self.families.len());
                    self.families.push(Merged {
                        name,
                        help: family.help,
                        kind: family.kind,
                        samples: family.samples.iter().map(|s| (worker, s)).collect(),
                    });
                }
            }
        }
    }

    /// Appends the merged exposition to `out`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for family in &self.families {
            if let Some(help) = family.help {
                let _ = writeln!(out, "# HELP {} {help}", family.name);
            }
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.unwrap_or("untyped"));
            for (worker, sample) in &family.samples {
                out.push_str(&renamed(sample.name));
                let _ = write!(out, "{{{WORKER_LABEL}=\"{worker}\"");
                for (name, value) in &sample.labels {
                    let name = if *name == WORKER_LABEL { EXPORTED_WORKER_LABEL } else { name };
                    let _ = write!(out, ",{name}=\"{value}\"");
                }
                let _ = write!(out, "}} {}", sample.value);
                if let Some(timestamp) = sample.timestamp {
                    let _ = write!(out, " {timestamp}");
                }
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = "# HELP requests_total Requests served.\n\
        # TYPE requests_total counter\n\
        requests_total{code=\"200\"} 3\n\
        requests_total{code=\"500\",path=\"/a \\\"b\\\"\"} 1 1700000000000\n\
        # some comment\n\
        # TYPE latency histogram\n\
        latency_bucket{le=\"0.1\"} 1\n\
        latency_bucket{le=\"+Inf\"} 2\n\
        latency_sum 0.3\n\
        latency_count 2\n\
        free 7\n";

    #[test]
    fn parses_families_and_their_suffixed_series() {
        let families = parse(WORKER).expect("valid");
        let names: Vec<_> = families.iter().map(|f| (f.name, f.kind, f.samples.len())).collect();
        assert_eq!(
            names,
            [("requests_total", Some("counter"), 2), ("latency", Some("histogram"), 4), ("free", None, 1)]
        );
        assert_eq!(families[0].samples[1].labels, [("code", "500"), ("path", "/a \\\"b\\\"")]);
        assert_eq!(families[0].samples[1].timestamp, Some("1700000000000"));
    }

    #[test]
    fn merges_workers_with_a_worker_label() {
        let zero = parse(WORKER).expect("valid");
        let one = parse(
            "# TYPE requests_total counter\nrequests_total{code=\"200\",worker=\"mine\"} 4\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n\
             # TYPE free gauge\nfree 1\n",
        )
        .expect("valid");
        let mut merger = Merger::default();
        merger.add(0, &zero);
        merger.add(1, &one);
        let mut out = String::new();
        merger.render(&mut out);
        assert_eq!(
            out,
            "# HELP requests_total Requests served.\n# TYPE requests_total counter\n\
             requests_total{worker=\"0\",code=\"200\"} 3\n\
             requests_total{worker=\"0\",code=\"500\",path=\"/a \\\"b\\\"\"} 1 1700000000000\n\
             requests_total{worker=\"1\",code=\"200\",exported_worker=\"mine\"} 4\n\
             # TYPE latency histogram\n\
             latency_bucket{worker=\"0\",le=\"0.1\"} 1\nlatency_bucket{worker=\"0\",le=\"+Inf\"} 2\n\
             latency_sum{worker=\"0\"} 0.3\nlatency_count{worker=\"0\"} 2\n\
             # TYPE free untyped\nfree{worker=\"0\"} 7\n\
             # TYPE worker_process_cpu_seconds_total counter\nworker_process_cpu_seconds_total{worker=\"1\"} 1.5\n"
        );
        // Worker 1's `free` is a gauge where worker 0's is untyped: left out, counted.
        assert_eq!(merger.conflicts, 1);
    }

    #[test]
    fn refuses_garbage() {
        for text in [
            "bad-name 1\n",
            "x{a=\"1\" 1\n",
            "x{a=1} 1\n",
            "x{a=\"\\q\"} 1\n",
            "x{a=\"1\",a=\"2\"} 1\n",
            "x one\n",
            "x 1 2.5\n",
            "x 1 2 3\n",
            "# TYPE x counter\n# TYPE x gauge\n",
            "x 1\n# TYPE x counter\n",
            "# HELP x a\n# HELP x b\n",
            "# TYPE x widget\n",
            "# HELP x trailing \\\n",
            "{a=\"1\"} 1\n",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        assert_eq!(parse("").expect("empty is fine"), []);
        assert!(parse("x NaN\ny +Inf\nz -Inf 5\n# EOF\n").is_ok());
    }
}
