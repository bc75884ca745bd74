//! `meshid ca authority …` and `meshid ca revoke`: commands to the running
//! CA over its admin socket (`DATA_DIR/ca-admin.sock`; see
//! [`crate::ca::admin`] for who may call them).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::ca::admin::{self, AdminRequest, AdminResponse, AuthorityInfo, SOCKET_FILE};
use crate::ca::authorities::RevocationReason;

/// Commands to the running CA.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// The CA's signing authorities: list, prepare, activate, taint, revoke.
    Authority(AuthorityArgs),
    /// Revoke one certificate: it is listed in every CRL, agents replace it, proxies refuse it.
    Revoke(RevokeArgs),
}

/// How to reach the CA.
#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The running CA's data directory (its admin socket is DATA_DIR/ca-admin.sock).
    #[arg(long, env = "MESHID_DATA_DIR", default_value = "meshid-data")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Columns for people.
    Table,
    /// `[{"id","state","tainted","not_after","subject_key_id"}]`.
    Json,
}

/// `meshid ca authority`.
#[derive(Debug, Args)]
pub struct AuthorityArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: AuthorityAction,
    /// The authority (its id, as `list` shows it). activate: the prepared one by default; taint and revoke: the only candidate by default.
    #[arg(long)]
    pub id: Option<String>,
    /// Where the CA is, and the output format.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// What `meshid ca authority` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorityAction {
    /// Every authority: prepared, active, old.
    List,
    /// Make the next authority (self-signed CA only); it is trusted at once and signs once activated.
    Prepare,
    /// Switch signing to the prepared authority; the active one becomes old (still trusted).
    Activate,
    /// Mark an old authority: agents re-issue every certificate that chains to it.
    Taint,
    /// Remove a tainted old authority from every bundle: what chains to it is refused.
    Revoke,
}

/// `meshid ca revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The certificate's serial number, hex (colons and a 0x prefix are allowed).
    #[arg(long)]
    pub serial: String,
    /// RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn.
    #[arg(long, default_value = "unspecified")]
    pub reason: RevocationReason,
    /// Where the CA is, and the output format.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs one command against the CA; fails (non-zero exit) when the CA refused it.
pub async fn run(command: CaCommand) -> anyhow::Result<()> {
    let (request, socket) = match command {
        CaCommand::Authority(args) => {
            let request = match args.action {
                AuthorityAction::List => {
                    if args.id.is_some() {
                        anyhow::bail!("`authority list` takes no --id");
                    }
                    AdminRequest::List
                }
                AuthorityAction::Prepare => {
                    if args.id.is_some() {
                        anyhow::bail!(
                            "`authority prepare` takes no --id: the CA makes the new authority"
                        );
                    }
                    AdminRequest::Prepare
                }
                AuthorityAction::Activate => AdminRequest::Activate { id: args.id },
                AuthorityAction::Taint => AdminRequest::Taint { id: args.id },
                AuthorityAction::Revoke => AdminRequest::Revoke { id: args.id },
            };
            (request, args.socket)
        }
        CaCommand::Revoke(args) => (
            AdminRequest::RevokeCertificate {
                serial: args.serial,
                reason: args.reason,
            },
            args.socket,
        ),
    };
    let path = socket.data_dir.join(SOCKET_FILE);
    let response = admin::call(&path, &request)
        .await
        .map_err(anyhow::Error::msg)?;
    print_response(&response, socket.output)?;
    match response.error {
        Some(error) => anyhow::bail!("{error}"),
        None => Ok(()),
    }
}

fn print_response(response: &AdminResponse, output: Output) -> anyhow::Result<()> {
    for problem in &response.problems {
        eprintln!("WARNING: {problem}");
    }
    if response.error.is_some() {
        return Ok(());
    }
    if let Some(message) = &response.message {
        eprintln!("{message}");
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&response.authorities)?),
        Output::Table => print!("{}", table(&response.authorities)),
    }
    Ok(())
}

/// The authorities as aligned columns.
pub fn table(authorities: &[AuthorityInfo]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "STATE".to_owned(),
        "TAINTED".to_owned(),
        "NOT AFTER".to_owned(),
    ]];
    for a in authorities {
        let not_after = a
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        rows.push([
            a.id.clone(),
            a.state.to_string(),
            if a.tainted { "yes" } else { "no" }.to_owned(),
            not_after,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
