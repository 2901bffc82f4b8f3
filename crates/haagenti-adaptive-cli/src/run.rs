//! `haagenti-adaptive run`.

/// Arguments of `haagenti-adaptive run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {}

pub(crate) fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`run` is not implemented yet")
}
