//! The benches' command line (`cargo bench --bench X -- --flag value`).

/// The value after flag `name` on this process's command line (the benches'
/// `cargo bench --bench X -- --flag value`).
pub fn cli_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether the flag `name` (without a value) is on the command line.
pub fn cli_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// [`cli_value`] parsed, or `default` when absent or unparsable.
pub fn cli_arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    cli_value(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
