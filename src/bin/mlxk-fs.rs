//! `mlxk-fs`: the FUSE filesystem that presents the HF cache as MLX workspaces.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "mlxk-fs",
    version,
    about = "Present every model of a Hugging Face cache as a managed MLX workspace (FUSE)",
    long_about = "Present every model of a Hugging Face cache as a managed MLX workspace.\n\n\
        Files are served zero-copy from the cache, each model gets a synthesized \
        .mlxk_workspace.json and an index rebuilt from its shard headers, and the cache is \
        never modified. This build provides the model store and the `mlxk` CLI; the `mount` \
        command arrives with the filesystem itself (see README.md, \"Roadmap\")."
)]
struct MlxkFsArgs {}

fn main() {
    mlxk_fs::cli::init_logging();
    let _args = MlxkFsArgs::parse();
    eprintln!("mlxk-fs: no command given; see `mlxk-fs --help`");
    std::process::exit(2);
}
