//! The `netpol-observe` binary.

fn main() -> std::process::ExitCode {
    netpol_observe::cli::main()
}
