//! `legate-xds`: the Legate control plane and its operator commands (see `legate_xds::cli`).

fn main() -> std::process::ExitCode {
    legate_xds::cli::main()
}
