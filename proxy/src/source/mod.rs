//! Where configs come from: the config file and the control plane. Each source turns what it
//! receives into an [`crate::apply::Update`] and hands it to the applier.

pub mod file;
pub mod xds;
