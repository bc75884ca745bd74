//! `meshid demo-app` (hidden): one demo application of `meshid up --netns`,
//! run inside its workload's network namespace: the echo server, and for
//! the frontend a call to the backend every second, each result printed as
//! a line (`call ok BODY`, `call failed ERROR`) that `up` counts.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::demo::{echo_server_on, get};
use crate::shutdown::Shutdown;

/// Flags of `meshid demo-app`.
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// The application's name (its answers start with it).
    #[arg(long)]
    pub name: String,
    /// Where it listens.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Calls `http://CALL/call/N` every second.
    #[arg(long)]
    pub call: Option<SocketAddr>,
}

/// Runs the application until SIGINT or SIGTERM.
pub async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .context("installing signal handlers")?;
    // Lives as long as the process.
    let name: &'static str = Box::leak(args.name.into_boxed_str());
    let addr = echo_server_on(name, args.listen, &shutdown).await?;
    say(&format!("demo-app ready {addr}"));
    if let Some(call) = args.call {
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            for n in 1u64.. {
                match get(call, &format!("/call/{n}")).await {
                    Ok(body) => say(&format!("call ok {body}")),
                    Err(error) => say(&format!("call failed {error}")),
                }
                tokio::select! {
                    () = stop.triggered() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    shutdown.triggered().await;
    Ok(())
}

/// One line on stdout, flushed (`up` reads it through a pipe).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
