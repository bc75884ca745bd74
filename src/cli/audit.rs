//! `meshid audit …`: read the audit store (while the CA runs, too) and
//! check its transparency log: `list`, `export`, `checkpoint-key`, `prove`, `verify`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::audit::checkpoint_key;
use crate::audit::tlog::note::NoteVerifier;
use crate::audit::{read_sqlite, render_json, render_table, AuditQuery, Outcome, StoreLocation};

/// `meshid audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first.
    List(ListArgs),
    /// Print the verifier key of the audit log's checkpoints (NAME+KEYID+KEY, C2SP signed-note).
    CheckpointKey(StoreArgs),
    /// Print an inclusion proof of a certificate's record in the latest signed checkpoint (RFC 9162).
    Prove(ProveArgs),
    /// Recompute the audit log from the store and check every checkpoint; exits non-zero naming the first record that does not match.
    Verify(VerifyArgs),
    /// Stream records as JSON lines, oldest first, for a SIEM (one record in memory at a time).
    Export(ExportArgs),
}

/// Flags of `meshid audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only records newer than this (e.g. 24h, 7d); all when absent.
    #[arg(long, value_parser = super::parse_duration)]
    pub since: Option<Duration>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub output: ExportFormat,
}

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line (the record's fields, as `list -o json`).
    Jsonl,
}

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Data directory holding audit.db and the checkpoint key.
    #[arg(long, env = "MESHID_DATA_DIR", default_value = "meshid-data")]
    pub data_dir: PathBuf,
    /// The audit store.
    #[command(flatten)]
    pub store: AuditStoreArgs,
}

impl StoreArgs {
    fn location(&self) -> anyhow::Result<StoreLocation> {
        self.store.location(&self.data_dir)
    }
}

/// Which audit store (`meshid ca` and every `meshid audit …` command).
#[derive(Debug, Clone, Args)]
pub struct AuditStoreArgs {
    /// The audit store: a SQLite file (default: DATA_DIR/audit.db) or postgres://USER@HOST:PORT/DB, which several CA replicas share. A password in it is never printed; prefer --audit-store-password-file.
    #[arg(long, env = "MESHID_AUDIT_STORE", hide_env_values = true)]
    pub audit_store: Option<String>,
    /// A file holding the PostgreSQL password (trailing newline ignored).
    #[arg(long, env = "MESHID_AUDIT_STORE_PASSWORD_FILE")]
    pub audit_store_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) of the PostgreSQL server: connects over TLS and verifies the server's certificate and host name against them.
    #[arg(long, env = "MESHID_AUDIT_STORE_CA_FILE")]
    pub audit_store_ca_file: Option<PathBuf>,
}

impl AuditStoreArgs {
    /// The store these flags name (`data_dir` holds the default SQLite file).
    pub fn location(&self, data_dir: &Path) -> anyhow::Result<StoreLocation> {
        StoreLocation::parse(
            self.audit_store.as_deref(),
            data_dir,
            self.audit_store_password_file.clone(),
            self.audit_store_ca_file.clone(),
        )
        .map_err(anyhow::Error::msg)
    }
}

/// Flags of `meshid audit prove`.
#[derive(Debug, Args)]
pub struct ProveArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The certificate's serial (hex, any case).
    #[arg(long)]
    pub serial: String,
    /// Output format (JSON only).
    #[arg(short = 'o', long, value_enum, default_value_t = ProveFormat::Json)]
    pub output: ProveFormat,
}

/// Output formats of `prove`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProveFormat {
    /// `{"leaf_index", "tree_size", "leaf", "proof", "checkpoint"}`.
    Json,
}

/// Flags of `meshid audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The verifier key to check checkpoints with (default: the one the CA wrote in the data directory). Give it when the data directory itself is not trusted.
    #[arg(long)]
    pub verifier_key: Option<String>,
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
    #[command(flatten)]
    store: StoreArgs,
    /// Only this namespace.
    #[arg(short = 'n', long, env = "MESHID_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only this service account.
    #[arg(long, env = "MESHID_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Only records newer than this (e.g. 10m, 24h).
    #[arg(long, env = "MESHID_AUDIT_SINCE", value_parser = super::parse_duration)]
    pub since: Option<Duration>,
    /// Only this outcome: issued, refused or revoked.
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
        .map_err(|_| format!("{s:?} is not an outcome: use issued, refused or revoked"))
}

/// Runs `meshid audit …` (on a blocking thread: a PostgreSQL client runs
/// a runtime of its own).
pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(cmd)).await?
}

fn run_blocking(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List(args) => list(args),
        AuditCommand::CheckpointKey(args) => {
            let verifier = match args.location()? {
                StoreLocation::Sqlite(_) => checkpoint_key::read_verifier(&args.data_dir)?
                    .verifier_key()
                    .to_owned(),
                shared => recorded_verifier(&shared)?,
            };
            println!("{verifier}");
            Ok(())
        }
        AuditCommand::Prove(args) => {
            let mut store = args.store.location()?.open_reader()?;
            let proof = store.prove(&args.serial.to_ascii_lowercase())?;
            match args.output {
                ProveFormat::Json => println!("{}", serde_json::to_string_pretty(&proof)?),
            }
            Ok(())
        }
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Export(args) => export(args),
    }
}

/// The verifier key recorded in a shared store by the first CA that signed.
fn recorded_verifier(location: &StoreLocation) -> anyhow::Result<String> {
    location.open_reader()?.recorded_verifier()?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no CA has signed a checkpoint into this store yet",
            location.name()
        )
    })
}

// The progress line shows real elapsed time.
#[allow(clippy::disallowed_methods)]
fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let location = args.store.location()?;
    let verifier = match (&args.verifier_key, &location) {
        (Some(key), _) => NoteVerifier::parse(key).context("--verifier-key")?,
        (None, StoreLocation::Sqlite(_)) => checkpoint_key::read_verifier(&args.store.data_dir)?,
        (None, shared) => {
            eprintln!(
                "checking against the verifier key recorded in the store; pass --verifier-key to check against one kept elsewhere"
            );
            NoteVerifier::parse(&recorded_verifier(shared)?)
                .context("the verifier key recorded in the store")?
        }
    };
    let mut store = location.open_reader()?;
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut progress = |done: u64, total: u64| {
        if !terminal {
            return;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let left = total.saturating_sub(done) as f64 / rate.max(1.0);
        eprint!("\rchecked {done} of {total} records, {rate:.0}/s, {left:.0} s left   ");
    };
    let verified = store.verify(&verifier, &mut progress);
    if terminal {
        eprintln!();
    }
    let verified = verified?;
    println!(
        "audit log verified: {} records ({} of them pruned by retention: leaf hashes only), {} checkpoints signed by {}",
        verified.records,
        verified.pruned,
        verified.checkpoints,
        verifier.name()
    );
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut store = args.store.location()?.open_reader()?;
    let query = AuditQuery {
        since: since(args.since)?,
        ..AuditQuery::default()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let ExportFormat::Jsonl = args.output;
    store.for_each(&query, &mut |record| {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")
    })?;
    out.flush()?;
    Ok(())
}

/// The time `ago` before now (None: no bound).
fn since(ago: Option<Duration>) -> anyhow::Result<Option<time::OffsetDateTime>> {
    ago.map(|d| {
        Ok(time::OffsetDateTime::now_utc()
            - time::Duration::try_from(d).context("--since is too long")?)
    })
    .transpose()
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let output = args.output;
    let records = list_records(args)?;
    let text = match output {
        OutputFormat::Table => render_table(&records),
        OutputFormat::Json => render_json(&records),
    };
    print!("{text}");
    Ok(())
}

/// The records `meshid audit list` prints.
fn list_records(args: ListArgs) -> anyhow::Result<Vec<crate::audit::AuditRecord>> {
    let since = since(args.since)?;
    let query = AuditQuery {
        namespace: args.namespace,
        service_account: args.service_account,
        since,
        outcome: args.outcome,
        serial: args.serial.map(|s| s.to_ascii_lowercase()),
        limit: args.limit,
    };
    Ok(match args.store.location()? {
        // The one read path for a local store (its errors name the file).
        StoreLocation::Sqlite(path) => read_sqlite(&path, &query)?,
        shared => shared.open_reader()?.list(&query)?,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use time::macros::datetime;

    use super::*;
    use crate::audit::record::full_record;
    use crate::audit::{AuditBackend, SqliteBackend};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        audit: AuditCommand,
    }

    fn list_args(args: &[&str]) -> Result<ListArgs, clap::Error> {
        let cli = Cli::try_parse_from(["audit", "list"].iter().chain(args))?;
        match cli.audit {
            AuditCommand::List(args) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_outcome_revoked_shows_only_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = datetime!(2025-03-01 12:00 UTC);
        let mut records: Vec<_> = [Outcome::Issued, Outcome::Refused, Outcome::Revoked]
            .into_iter()
            .enumerate()
            .map(|(i, o)| full_record(t0 + time::Duration::minutes(i as i64), "shop", "cart", o))
            .collect();
        records[2].serial = Some("0abc".to_owned());
        SqliteBackend::open(&dir.path().join("audit.db"))
            .unwrap()
            .append(&records)
            .unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let args = list_args(&["--data-dir", data_dir, "--outcome", "revoked"]).unwrap();
        assert_eq!(args.outcome, Some(Outcome::Revoked));
        assert_eq!(list_records(args).unwrap(), [records[2].clone()]);
        let args = list_args(&["--data-dir", data_dir, "--outcome", "issued"]).unwrap();
        assert_eq!(list_records(args).unwrap(), [records[0].clone()]);
        let args = list_args(&["--data-dir", data_dir]).unwrap();
        assert_eq!(list_records(args).unwrap(), records);
    }

    #[test]
    fn list_outcome_names_the_three_outcomes_when_given_another() {
        let err = list_args(&["--outcome", "granted"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"granted\" is not an outcome: use issued, refused or revoked"),
            "{err}"
        );
    }
}
