//! `haagenti-adaptive probe`.

/// Arguments of `haagenti-adaptive probe`.
#[derive(clap::Args)]
pub(crate) struct ProbeArgs {}

pub(crate) fn run(_args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`probe` is not implemented yet")
}
