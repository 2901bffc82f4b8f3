//! `haagenti-adaptive plan`.

/// Arguments of `haagenti-adaptive plan`.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {}

pub(crate) fn run(_args: PlanArgs) -> anyhow::Result<()> {
    anyhow::bail!("`plan` is not implemented yet")
}
