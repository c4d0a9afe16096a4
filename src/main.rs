//! The binary's edge: hands over to [`cio_sync::cli::main`], the single exit point.

fn main() -> std::process::ExitCode {
    cio_sync::cli::main()
}
