//! The `meshid` binary: parse flags, set up telemetry, hand off to [`meshid::cli`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshid::cli::main()
}
