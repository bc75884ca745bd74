//! Reading the audit log back: the filter [`AuditQuery`] every backend implements,
//! and the two renderings `meshid audit list` prints ([`render_table`] for people,
//! [`render_json`] for tools).

use std::fmt::Write as _;

use time::macros::format_description;
use time::OffsetDateTime;

use super::record::{AuditRecord, Outcome};

/// Which records to return. Every filter set must match (AND); an empty query
/// returns everything.
///
/// Backends return matches ordered by time, oldest first. With a
/// [`limit`](Self::limit) they return the *newest* `limit` matches, still oldest first,
/// so `meshid audit list --limit 20` shows the last 20 decisions in reading order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records whose namespace (of the granted, else requested, identity) is this.
    pub namespace: Option<String>,
    /// Only records whose service account is this.
    pub service_account: Option<String>,
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records with this outcome.
    pub outcome: Option<Outcome>,
    /// Only records of the certificate with this serial (lower-case hex, as
    /// recorded): how the CA finds the pod a renewed certificate was issued to.
    pub serial: Option<String>,
    /// At most this many records: the newest ones.
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// Whether `rec` passes every filter (the limit aside). Backends filter in their
    /// own query language; this is the reference they are tested against.
    pub fn matches(&self, rec: &AuditRecord) -> bool {
        fn eq(filter: &Option<String>, value: &Option<String>) -> bool {
            filter.is_none() || filter.as_deref() == value.as_deref()
        }
        eq(&self.namespace, &rec.namespace)
            && eq(&self.service_account, &rec.service_account)
            && self.since.is_none_or(|since| rec.time >= since)
            && self.outcome.is_none_or(|o| rec.outcome == o)
            && eq(&self.serial, &rec.serial)
    }
}

const COLUMNS: [&str; 10] = [
    "TIME",
    "OUTCOME",
    "IDENTITY",
    "CALLER",
    "NODE",
    "POD",
    "SERIAL",
    "NOT AFTER",
    "TTL",
    "REASON",
];

/// Hex digits of the serial shown in the table; enough to find the full record.
const SERIAL_SHORT: usize = 12;

/// A human-readable table, one line per record plus a header, columns aligned.
///
/// Columns: time (UTC, to the second), outcome, identity (granted, else requested),
/// caller, node, pod, serial (first 12 hex digits), not-after, TTL (granted, else
/// requested), reason. Missing values print as `-`. Control characters in any
/// value are escaped, so a hostile requested identity cannot rewrite the terminal.
pub fn render_table(records: &[AuditRecord]) -> String {
    let rows: Vec<[String; 10]> = records.iter().map(table_row).collect();
    let mut widths = COLUMNS.map(|c| c.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    push_line(&mut out, &COLUMNS.map(str::to_owned), &widths);
    for row in &rows {
        push_line(&mut out, row, &widths);
    }
    out
}

/// JSON lines: one JSON object per record, each on its own line (`\n`-terminated),
/// fields named as in [`AuditRecord`], times in RFC 3339. Streams well into `jq`.
pub fn render_json(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for rec in records {
        match serde_json::to_string(rec) {
            Ok(line) => out.push_str(&line),
            // Only a time outside RFC 3339's years 0..=9999 can fail; stored records
            // never hold one. Keep the output valid JSON lines regardless.
            Err(e) => out.push_str(&serde_json::json!({ "error": e.to_string() }).to_string()),
        }
        out.push('\n');
    }
    out
}

fn push_line(out: &mut String, cells: &[String; 10], widths: &[usize; 10]) {
    let last = cells.len() - 1;
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i == last {
            out.push_str(cell);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "{cell:<width$}  ");
        }
    }
    let trimmed = out.trim_end_matches(' ').len();
    out.truncate(trimmed);
    out.push('\n');
}

fn table_row(rec: &AuditRecord) -> [String; 10] {
    let text = |v: Option<&str>| v.map_or_else(|| "-".to_owned(), escape_controls);
    let serial = rec
        .serial
        .as_deref()
        .map(|s| s.chars().take(SERIAL_SHORT).collect::<String>());
    [
        format_time(rec.time),
        rec.outcome.to_string(),
        text(rec.identity()),
        text(rec.caller.as_deref()),
        text(rec.node.as_deref()),
        text(rec.pod_name.as_deref()),
        text(serial.as_deref()),
        rec.not_after.map_or_else(|| "-".to_owned(), format_time),
        rec.granted_ttl_secs
            .or(rec.requested_ttl_secs)
            .map_or_else(|| "-".to_owned(), format_ttl),
        text(rec.reason.as_deref()),
    ]
}

fn format_time(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| utc.to_string())
}

/// Seconds in the largest unit that divides them exactly: `86400` → `1d`,
/// `5400` → `90m`, `61` → `61s`.
fn format_ttl(secs: i64) -> String {
    const UNITS: [(i64, &str); 3] = [(86_400, "d"), (3_600, "h"), (60, "m")];
    if secs != 0 {
        for (size, unit) in UNITS {
            if secs % size == 0 {
                return format!("{}{unit}", secs / size);
            }
        }
    }
    format!("{secs}s")
}

fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::full_record;
    use time::macros::datetime;

    #[test]
    fn table_has_a_header_and_one_aligned_line_per_record() {
        let issued = full_record(
            datetime!(2025-03-01 12:00 UTC),
            "shop",
            "cart",
            Outcome::Issued,
        );
        let mut refused = AuditRecord::new(datetime!(2025-03-01 12:00:05 UTC), Outcome::Refused);
        refused.caller = Some("unauthenticated".to_owned());
        refused.reason = Some("token expired".to_owned());
        let table = render_table(&[issued, refused]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("TIME "), "{table}");
        assert!(
            lines[1].starts_with("2025-03-01T12:00:00Z  issued "),
            "{table}"
        );
        assert!(
            lines[1].contains("spiffe://cluster.local/ns/shop/sa/cart"),
            "{table}"
        );
        assert!(
            lines[1].contains(" 5f1e2d3c4b5a "),
            "serial is shortened: {table}"
        );
        assert!(
            !lines[1].contains("5f1e2d3c4b5a6"),
            "serial is shortened: {table}"
        );
        assert!(lines[1].contains("2025-03-02T12:00:00Z  1d"), "{table}");
        assert!(lines[2].ends_with("token expired"), "{table}");
        let outcome_col = lines[0].find("OUTCOME").unwrap();
        assert_eq!(lines[2].find("refused"), Some(outcome_col), "{table}");
        let reason_col = lines[0].find("REASON").unwrap();
        assert_eq!(lines[2].find("token expired"), Some(reason_col), "{table}");
    }

    #[test]
    fn table_escapes_control_characters() {
        let mut rec = AuditRecord::new(datetime!(2025-03-01 12:00 UTC), Outcome::Refused);
        rec.requested_identity = Some("spiffe://x/\u{1b}[2J\nfake".to_owned());
        let table = render_table(&[rec]);
        assert!(!table.contains('\u{1b}'), "{table:?}");
        assert_eq!(table.lines().count(), 2, "{table:?}");
    }

    #[test]
    fn json_lines_have_one_parseable_object_per_record() {
        let recs = vec![
            full_record(
                datetime!(2025-03-01 12:00 UTC),
                "shop",
                "cart",
                Outcome::Issued,
            ),
            full_record(
                datetime!(2025-03-01 12:01 UTC),
                "shop",
                "pay",
                Outcome::Refused,
            ),
        ];
        let out = render_json(&recs);
        assert!(out.ends_with('\n'));
        let back: Vec<AuditRecord> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(back, recs);
        assert_eq!(render_json(&[]), "");
    }

    #[test]
    fn ttl_uses_the_largest_exact_unit() {
        assert_eq!(format_ttl(86_400), "1d");
        assert_eq!(format_ttl(7_776_000), "90d");
        assert_eq!(format_ttl(5_400), "90m");
        assert_eq!(format_ttl(61), "61s");
        assert_eq!(format_ttl(0), "0s");
        assert_eq!(format_ttl(-3_600), "-1h");
    }

    #[test]
    fn matches_applies_every_filter() {
        let rec = full_record(
            datetime!(2025-03-01 12:00 UTC),
            "shop",
            "cart",
            Outcome::Issued,
        );
        assert!(AuditQuery::default().matches(&rec));
        let q = |f: fn(&mut AuditQuery)| {
            let mut q = AuditQuery::default();
            f(&mut q);
            q.matches(&rec)
        };
        assert!(q(|q| q.namespace = Some("shop".into())));
        assert!(!q(|q| q.namespace = Some("other".into())));
        assert!(!q(|q| q.service_account = Some("pay".into())));
        assert!(q(|q| q.since = Some(datetime!(2025-03-01 12:00 UTC))));
        assert!(!q(|q| q.since = Some(datetime!(2025-03-01 12:00:01 UTC))));
        assert!(!q(|q| q.outcome = Some(Outcome::Refused)));
    }
}
