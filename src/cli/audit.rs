//! `meshid audit list`: read the audit store (while the CA runs, too).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::audit::{read_sqlite, render_json, render_table, AuditQuery, Outcome};

/// `meshid audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first.
    List(ListArgs),
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// One JSON object per line.
    Json,
}

/// Flags of `meshid audit list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Data directory holding audit.db.
    #[arg(long, env = "MESHID_DATA_DIR", default_value = "meshid-data")]
    pub data_dir: PathBuf,
    /// Only this namespace.
    #[arg(short = 'n', long, env = "MESHID_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only this service account.
    #[arg(long, env = "MESHID_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Only records newer than this (e.g. 10m, 24h).
    #[arg(long, env = "MESHID_AUDIT_SINCE", value_parser = super::parse_duration)]
    pub since: Option<Duration>,
    /// Only this outcome.
    #[arg(long, env = "MESHID_AUDIT_OUTCOME", value_parser = parse_outcome)]
    pub outcome: Option<Outcome>,
    /// Only the certificate with this serial (hex, as `-o json` prints it; any case).
    #[arg(long, env = "MESHID_AUDIT_SERIAL")]
    pub serial: Option<String>,
    /// At most this many (the newest).
    #[arg(long, env = "MESHID_AUDIT_LIMIT")]
    pub limit: Option<usize>,
    /// Output format.
    #[arg(short = 'o', long, env = "MESHID_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    s.parse::<Outcome>()
        .map_err(|_| format!("{s:?} is not an outcome: use issued or refused"))
}

/// Runs `meshid audit …`.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("audit.db");
    let since = match args.since {
        Some(d) => Some(
            time::OffsetDateTime::now_utc()
                - time::Duration::try_from(d).context("--since is too long")?,
        ),
        None => None,
    };
    let query = AuditQuery {
        namespace: args.namespace,
        service_account: args.service_account,
        since,
        outcome: args.outcome,
        serial: args.serial.map(|s| s.to_ascii_lowercase()),
        limit: args.limit,
    };
    let records = read_sqlite(&path, &query)?;
    let text = match args.output {
        OutputFormat::Table => render_table(&records),
        OutputFormat::Json => render_json(&records),
    };
    print!("{text}");
    Ok(())
}
