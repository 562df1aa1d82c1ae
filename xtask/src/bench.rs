use anyhow::{Result, bail};

pub fn write(_args: &[&str]) -> Result<()> {
    bail!("the write benchmark is not built yet")
}
