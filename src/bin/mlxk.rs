use std::process::ExitCode;

fn main() -> ExitCode {
    mlxk_fs::cli::mlxk_main()
}
