//! The `meshid-proxy` binary: `meshid proxy` alone (see [`meshid::cli::proxy_main`]).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshid::cli::proxy_main()
}
