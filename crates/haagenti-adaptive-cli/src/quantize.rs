//! `haagenti-adaptive quantize`.

/// Arguments of `haagenti-adaptive quantize`.
#[derive(clap::Args)]
pub(crate) struct QuantizeArgs {}

pub(crate) fn run(_args: QuantizeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`quantize` is not implemented yet")
}
