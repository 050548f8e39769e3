//! The `conflux` binary: a thin shell over [`conflux::cli`].

fn main() -> std::process::ExitCode {
    conflux::cli::main()
}
